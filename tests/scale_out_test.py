#!/usr/bin/python3
"""The scale-out picture on loopback: two CPU fwp-server replicas sharing a
snapshot directory behind a real nginx running the repo's own config
(docker/nginx/fwp.conf).

  - a chat session's turns (x-session-id header) all land on one replica;
  - killing that replica, the session continues on the other one from the
    shared snapshot, exactly as if nothing had happened (compared with a
    server that ran all turns itself);
  - new sessions spread over both replicas.

Usage: scale_out_test.py FWP_SERVER MODEL_DIR REPO_DIR PYTHON_STUBS"""
import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

server_bin, model, repo, stubs = sys.argv[1:5]
sys.path.insert(0, stubs)
import grpc  # noqa: E402
from fwp.v1 import fwp_pb2, fwp_pb2_grpc  # noqa: E402

tmp = tempfile.mkdtemp()
procs = []
atexit.register(lambda: cleanup())  # whatever fails, no process outlives the test


def fail(message):
    print("FAIL:", message)
    for name in os.listdir(tmp):
        if name.endswith(".log"):
            print("----", name)
            print(open(os.path.join(tmp, name)).read()[-3000:])
    cleanup()
    sys.exit(1)


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def start_server(name, *extra):
    port_file = os.path.join(tmp, name + ".port")
    log = os.path.join(tmp, name + ".log")
    p = subprocess.Popen([server_bin, "--model", model, "--address", "127.0.0.1:0",
                          "--metrics_port", "0", "--port_file", port_file,
                          "--replica_name", name, *extra], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    procs.append(p)
    for _ in range(300):
        if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
            break
        time.sleep(0.1)
    else:
        fail("replica %s did not start" % name)
    metrics = int(re.search(r"metrics on :(\d+)", open(log).read()).group(1))
    return p, int(open(port_file).read()), metrics


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def generated_ok(metrics_port, at_least=0):
    """Generate calls a replica counted OK (a call is counted just after the
    client has its answer, so wait briefly for `at_least`)."""
    for _ in range(100):
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port).read().decode()
        m = re.search(r'fwp_requests_total\{method="Generate",code="OK"\} (\d+)', text)
        count = int(m.group(1)) if m else 0
        if count >= at_least:
            return count
        time.sleep(0.02)
    return count


snapshots = os.path.join(tmp, "snapshots")
shared = ["--snapshot_dir", snapshots, "--snapshot_every_turn"]
a, a_port, a_metrics = start_server("replica-a", *shared)
b, b_port, b_metrics = start_server("replica-b", *shared)
replicas = {"replica-a": (a, a_metrics), "replica-b": (b, b_metrics)}

# nginx with the repo's config; only the upstream list and the paths a
# non-root nginx needs are the test's own.
nginx_port = free_port()
with open(os.path.join(tmp, "fwp-upstreams.conf"), "w") as f:
    f.write("server 127.0.0.1:%d max_fails=1 fail_timeout=10s;\n" % a_port)
    f.write("server 127.0.0.1:%d max_fails=1 fail_timeout=10s;\n" % b_port)
fwp_conf = open(os.path.join(repo, "docker", "nginx", "fwp.conf")).read()
fwp_conf = fwp_conf.replace("listen 50051 http2;", "listen 127.0.0.1:%d http2;" % nginx_port)
with open(os.path.join(tmp, "fwp.conf"), "w") as f:
    f.write(fwp_conf)
with open(os.path.join(tmp, "nginx.conf"), "w") as f:
    f.write("""daemon off;
master_process off;
pid %(tmp)s/nginx.pid;
error_log %(tmp)s/nginx.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    include %(tmp)s/fwp.conf;
}
""" % {"tmp": tmp})
# One process (no workers to outlive the test holding its output pipes).
nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin: not on every PATH
nginx = subprocess.Popen([nginx_bin, "-p", tmp, "-e", os.path.join(tmp, "nginx.log"),
                          "-c", os.path.join(tmp, "nginx.conf")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(tmp, "nginx-stderr.log"), "w"))
procs.append(nginx)
balancer = "127.0.0.1:%d" % nginx_port
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", nginx_port), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    fail("nginx did not start")

lb = fwp_pb2_grpc.FwpStub(grpc.insecure_channel(balancer))


def ids(*values):
    return fwp_pb2.Prompt(ids=fwp_pb2.TokenIds(ids=list(values)))


def turn(stub, session, prompt, header=True):
    request = fwp_pb2.GenerateRequest(
        prompt=prompt, session_id=session, logprobs=True,
        stopping=fwp_pb2.StoppingParams(max_tokens=6, ignore_eos=True))
    md = [("x-session-id", session)] if header else []
    tokens, logprobs = [], []
    for m in stub.Generate(request, metadata=md, timeout=60):
        tokens.extend(m.token_ids)
        logprobs.extend(lp.logprob for lp in m.logprobs)
    return tokens, logprobs


def replica_of(session):
    return lb.ModelInfo(fwp_pb2.ModelInfoRequest(), metadata=[("x-session-id", session)],
                        timeout=10).replica


prompts = [ids(120, 45, 1033, 87), ids(9, 311), ids(70, 71), ids(505, 9)]

# The reference: one server, all turns.
ref_proc, ref_port, _ = start_server("reference")
ref = fwp_pb2_grpc.FwpStub(grpc.insecure_channel("127.0.0.1:%d" % ref_port))
ref_session = secrets.token_hex(16)
ref.CreateSession(fwp_pb2.CreateSessionRequest(session_id=ref_session, prompt=prompts[0]))
expected = [turn(ref, ref_session, p, header=False) for p in prompts[1:]]

try:
    # New sessions spread over both replicas.
    seen = {}
    for _ in range(16):
        s = secrets.token_hex(16)
        lb.CreateSession(fwp_pb2.CreateSessionRequest(session_id=s),
                         metadata=[("x-session-id", s)], timeout=10)
        seen[s] = replica_of(s)
    if set(seen.values()) != {"replica-a", "replica-b"}:
        fail("new sessions did not spread: %s" % sorted(seen.values()))

    # A chat session: every turn on one replica.
    session = secrets.token_hex(16)
    lb.CreateSession(fwp_pb2.CreateSessionRequest(session_id=session, prompt=prompts[0]),
                     metadata=[("x-session-id", session)], timeout=30)
    home = replica_of(session)
    other = "replica-b" if home == "replica-a" else "replica-a"
    before = {name: generated_ok(m) for name, (_, m) in replicas.items()}
    got = [turn(lb, session, prompts[1]), turn(lb, session, prompts[2])]
    after = {name: generated_ok(m, before[name] + (2 if name == home else 0))
             for name, (_, m) in replicas.items()}
    if after[home] - before[home] != 2 or after[other] != before[other]:
        fail("turns did not all land on %s: before %s after %s" % (home, before, after))
    if got != expected[:2]:
        fail("turns through the balancer differ from the reference")

    # Kill the replica holding it; the session goes on on the other one.
    replicas[home][0].send_signal(signal.SIGKILL)
    replicas[home][0].wait()
    got.append(turn(lb, session, prompts[3]))
    if got[2] != expected[2]:
        fail("the resumed session diverged: %s vs %s" % (got[2], expected[2]))
    if replica_of(session) != other:
        fail("the session is not on %s after the failover" % other)
    if generated_ok(replicas[other][1], after[other] + 1) != after[other] + 1:
        fail("the failed-over turn did not run on %s" % other)
except grpc.RpcError as error:
    fail("RPC failed: %s %s" % (error.code(), error.details()))
finally:
    cleanup()
print("ok")
