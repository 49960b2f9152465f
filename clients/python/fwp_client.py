#!/usr/bin/python3
"""An example fwp client in Python (Debian's python3-grpcio).

Stubs come from proto/fwp/v1/fwp.proto; the build makes them in build/python
(or make them yourself:
    protoc -I proto --python_out=OUT --grpc_python_out=OUT \\
        --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin proto/fwp/v1/fwp.proto).

    fwp_client.py generate --prompt "The jury said" --max_tokens 32
    fwp_client.py chat            # one line per turn on stdin; Ctrl-D ends

Behind a load balancer the session id also goes in the x-session-id header,
so every turn reaches the replica holding the session's state.
"""
import argparse
import os
import queue
import secrets
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("FWP_PY_STUBS", os.path.join(HERE, "..", "..", "build", "python")))

import grpc  # noqa: E402
from fwp.v1 import fwp_pb2, fwp_pb2_grpc  # noqa: E402

FINISH = {v: k.replace("FINISH_REASON_", "").lower()
          for k, v in fwp_pb2.FinishReason.items()}


def metadata(args, session_id=None):
    md = []
    if args.token:
        md.append(("authorization", "Bearer " + args.token))
    if session_id:
        md.append(("x-session-id", session_id))
    return md


def sampling(args):
    return fwp_pb2.SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                  seed=args.seed if args.seed >= 0 else None)


def generate(stub, args):
    request = fwp_pb2.GenerateRequest(
        prompt=fwp_pb2.Prompt(text=args.prompt), sampling=sampling(args),
        stopping=fwp_pb2.StoppingParams(max_tokens=args.max_tokens))
    tokens = []
    for message in stub.Generate(request, metadata=metadata(args)):
        tokens.extend(message.token_ids)
        sys.stdout.write(message.text)
        sys.stdout.flush()
        if message.finished:
            usage = message.usage
            sys.stdout.write("\n")
            sys.stderr.write("[%s] %d prompt + %d generated tokens, first token %.1f ms\n" % (
                FINISH[message.finish_reason], usage.prompt_tokens, usage.generated_tokens,
                usage.time_to_first_token_s * 1e3))
    return tokens


def chat(stub, args):
    """A chat loop: one session (its id chosen here), one Chat stream, one
    turn per input line."""
    session_id = secrets.token_hex(16)
    stub.CreateSession(fwp_pb2.CreateSessionRequest(session_id=session_id),
                       metadata=metadata(args, session_id))
    turns = queue.Queue()

    def requests():
        first = True
        while True:
            line = turns.get()
            if line is None:
                return
            yield fwp_pb2.ChatRequest(
                prompt=fwp_pb2.Prompt(text=line), session_id=session_id if first else "",
                sampling=sampling(args), stopping=fwp_pb2.StoppingParams(max_tokens=args.max_tokens))
            first = False

    replies = stub.Chat(requests(), metadata=metadata(args, session_id))
    print("session %s" % session_id)
    try:
        for line in sys.stdin:
            line = line.rstrip("\n")
            if not line:
                continue
            turns.put(line)
            for message in replies:
                sys.stdout.write(message.text)
                sys.stdout.flush()
                if message.finished:
                    sys.stdout.write("\n[%s, %d tokens; session has seen %d]\n" % (
                        FINISH[message.finish_reason], message.usage.generated_tokens,
                        message.usage.session_tokens))
                    break
    finally:
        turns.put(None)
        replies.cancel()  # a reply still streaming (Ctrl-C) ends here
        try:  # best effort: an error here must not hide the one that got us here
            stub.DeleteSession(fwp_pb2.DeleteSessionRequest(session_id=session_id),
                               metadata=metadata(args, session_id), timeout=10)
        except grpc.RpcError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["generate", "chat"])
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--token", default=os.environ.get("FWP_TOKEN", ""))
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the system's roots)")
    parser.add_argument("--ca_cert", default="", help="PEM roots: connect with TLS")
    parser.add_argument("--prompt", default="The jury said")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=-1)
    args = parser.parse_args()
    if args.ca_cert or args.tls:
        roots = open(args.ca_cert, "rb").read() if args.ca_cert else None
        channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials(roots))
    else:
        channel = grpc.insecure_channel(args.address)
    stub = fwp_pb2_grpc.FwpStub(channel)
    try:
        if args.command == "generate":
            generate(stub, args)
        else:
            chat(stub, args)
    except grpc.RpcError as error:
        sys.stderr.write("error %s: %s\n" % (error.code().name, error.details()))
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the reply is cancelled, the session deleted
        sys.stderr.write("\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
