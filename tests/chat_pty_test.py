#!/usr/bin/python3
"""fwp-chat driven through a pseudo-terminal against a real fwp-server:
two turns, /fork, /save and /load, Ctrl-C in the middle of a reply, /stats,
/quit. Usage: chat_pty_test.py FWP_SERVER FWP_CHAT MODEL_DIR"""
import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import time

server_bin, chat_bin, model = sys.argv[1:4]
tmp = tempfile.mkdtemp()
port_file = os.path.join(tmp, "port")
server = subprocess.Popen(
    [server_bin, "--model", model, "--address", "127.0.0.1:0", "--metrics_port", "-1",
     "--port_file", port_file], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    stderr=open(os.path.join(tmp, "server.log"), "w"))


def fail(message):
    print("FAIL:", message)
    print(open(os.path.join(tmp, "server.log")).read())
    server.kill()
    sys.exit(1)


for _ in range(300):
    if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
        break
    time.sleep(0.1)
else:
    fail("server did not start")
port = open(port_file).read().strip()

pid, fd = pty.fork()
if pid == 0:
    os.execv(chat_bin, [chat_bin, "--address", "127.0.0.1:" + port, "--max_tokens", "8",
                        "--temperature", "0", "--sessions_file", os.path.join(tmp, "names")])

output = b""


def read_until(marker, timeout=30.0):
    """Reads the terminal until `marker` appears after what was read so far."""
    global output
    start = len(output)
    deadline = time.time() + timeout
    while marker.encode() not in output[start:]:
        left = deadline - time.time()
        if left <= 0:
            fail("timed out waiting for %r; got %r" % (marker, output[start:].decode(errors="replace")))
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                fail("fwp-chat exited; got %r" % output[start:].decode(errors="replace"))
            output += chunk
    return output[start:].decode(errors="replace")


def send(text):
    os.write(fd, text.encode())


def read_more(count, timeout=30.0):
    """Reads until `count` more bytes have arrived."""
    global output
    target = len(output) + count
    deadline = time.time() + timeout
    while len(output) < target:
        left = deadline - time.time()
        if left <= 0:
            fail("timed out waiting for output")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            output += os.read(fd, 4096)


banner = read_until("> ")
if "session" not in banner:
    fail("no banner: %r" % banner)
send("The jury said\r")
first = read_until("> ")
if len(first.strip().splitlines()) < 2:
    fail("no reply to the first turn: %r" % first)
send("and the mayor\r")
second = read_until("> ")
send("/fork\r")
forked = read_until("> ")
if "forked" not in forked:
    fail("/fork: %r" % forked)
send("/save mine\r")
if "saved session" not in read_until("> "):
    fail("/save")
send("/load mine\r")
if "loaded \"mine\"" not in read_until("> "):
    fail("/load")
names = open(os.path.join(tmp, "names")).read()
if "mine " not in names:
    fail("sessions file: %r" % names)
# A long reply, cancelled by Ctrl-C once it streams.
send("/max_tokens 4000\r")
read_until("> ")
send("It was a cold day\r")
read_until("It was a cold day\r\n")  # the echo
read_more(20)  # the reply is streaming
send("\x03")
cancelled = read_until("> ", timeout=10)
if "[cancelled]" not in cancelled:
    fail("Ctrl-C did not cancel the reply: %r" % cancelled[-300:])
# The program and the session are still there.
send("/max_tokens 4\r")
read_until("> ")
send("Yes\r")
after = read_until("> ")
if "[the reply failed" in after or len(after.strip().splitlines()) < 2:
    fail("the turn after the cancel: %r" % after)
send("\x03")  # at the prompt: nothing happens
time.sleep(0.2)
send("/stats\r")
stats = read_until("> ")
if "tokens/s" not in stats or "state 512.0 KiB" not in stats:
    fail("/stats: %r" % stats)
send("/quit\r")
_, status = os.waitpid(pid, 0)
if os.WEXITSTATUS(status) != 0:
    fail("fwp-chat exit status %d" % os.WEXITSTATUS(status))

# SIGTERM (or SIGHUP: the terminal closed) at the prompt quits as /quit does:
# the session it made is deleted on the server.
pid, fd = pty.fork()
if pid == 0:
    os.execv(chat_bin, [chat_bin, "--address", "127.0.0.1:" + port, "--max_tokens", "4",
                        "--temperature", "0", "--sessions_file", os.path.join(tmp, "names")])
output = b""
banner = read_until("> ")
session = banner.split("session ", 1)[1].split()[0]
send("The jury said\r")
read_until("> ")
os.kill(pid, signal.SIGTERM)
deadline = time.time() + 10
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    try:  # keep the terminal drained
        if select.select([fd], [], [], 0.1)[0]:
            os.read(fd, 4096)
    except OSError:
        pass
else:
    fail("fwp-chat did not quit on SIGTERM")
if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
    fail("fwp-chat on SIGTERM: status %r" % status)
gone = subprocess.run([chat_bin, "--address", "127.0.0.1:" + port, "--session", session],
                      stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
if gone.returncode == 0 or "NOT_FOUND" not in gone.stdout + gone.stderr:
    fail("the session of a SIGTERM'd fwp-chat was not deleted: %r" % (gone.stdout + gone.stderr))

server.send_signal(signal.SIGTERM)
if server.wait(timeout=30) != 0:
    fail("server exit status")
print("ok")
