"""`exray agent`: its command line, and the loop that serves until SIGTERM.

    exray agent [--listen unix:/run/exray/agent.sock | tcp:HOST:PORT]
                [--token-file F] [--tls-cert C --tls-key K --client-ca CA]
                --allow-exe GLOB | --allow-uid UID | --allow-cgroup PATH | --policy FILE
                [--min-interval S] [--max-pause S] [--allow-executor NAME] [--audit-log F]
                [--host-name NAME]

See docs/agent.md. The agent prints `listening on ADDR` once it serves.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

DEFAULT_LISTEN = "unix:/run/exray/agent.sock"
DEFAULT_AUDIT = "/var/log/exray/agent-audit.jsonl"


def add_arguments(a: argparse.ArgumentParser) -> None:
    a.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR",
                   help=f"unix:/PATH (mode 0600) or tcp:HOST:PORT, which needs --token-file or mutual TLS "
                        f"(default {DEFAULT_LISTEN})")
    a.add_argument("--token-file", metavar="FILE",
                   help="bearer tokens clients must send, one per line ('NAME TOKEN'); mode 0600")
    a.add_argument("--tls-cert", metavar="PEM", help="the agent's certificate")
    a.add_argument("--tls-key", metavar="PEM", help="the agent's private key")
    a.add_argument("--client-ca", metavar="PEM", help="CA that signs client certificates (mutual TLS)")
    a.add_argument("--policy", metavar="FILE", help="JSON policy (allow_exe, allow_uid, allow_cgroup, "
                   "min_interval_s, max_request_s, max_pause_deadline_s, max_pids, max_message_bytes, "
                   "pause_together, executors, max_capture_limits)")
    a.add_argument("--allow-exe", action="append", metavar="GLOB",
                   help="snapshot only processes whose exe path matches (repeatable; '*' = any)")
    a.add_argument("--allow-uid", action="append", type=int, metavar="UID", help="... whose uid is one of these")
    a.add_argument("--allow-cgroup", action="append", metavar="PATH",
                   help="... whose cgroup is under one of these paths (e.g. /kubepods.slice)")
    a.add_argument("--min-interval", type=float, metavar="S", help="pause a process at most once per S seconds")
    a.add_argument("--max-pause", type=float, metavar="S", help="bound on any one pause (seconds)")
    a.add_argument("--max-request", type=float, metavar="S", help="bound on any one request (seconds)")
    a.add_argument("--max-message-bytes", type=int, metavar="N", help="cap on every gRPC message")
    a.add_argument("--allow-executor", action="append", choices=("ptrace", "ebpf", "auto"), metavar="NAME",
                   help="an executor requests may ask for: ptrace, ebpf, auto (repeatable; the first serves "
                        "requests that name none; default: all three, ptrace first)")
    a.add_argument("--sequential-pauses", dest="pause_together", action="store_false", default=None,
                   help="pause a request's processes one after another from the agreed instant instead of "
                        "all stopped together (each pause only one process's; later instants: see skew_ns)")
    a.add_argument("--audit-log", default=DEFAULT_AUDIT, metavar="FILE",
                   help=f"JSON lines, one per request (default {DEFAULT_AUDIT}; '-' = stderr)")
    a.add_argument("--host-name", metavar="NAME", help="the host name records carry (default: this machine's)")


def policy_from_args(args):
    from .policy import Policy
    policy = Policy.from_file(args.policy) if args.policy else Policy()
    policy.allow_exe += args.allow_exe or []
    policy.allow_uid += args.allow_uid or []
    policy.allow_cgroup += args.allow_cgroup or []
    if args.allow_executor:
        policy.executors = list(dict.fromkeys(args.allow_executor))
    for attr, flag in (("min_interval_s", "min_interval"), ("max_pause_deadline_s", "max_pause"),
                       ("max_request_s", "max_request"), ("max_message_bytes", "max_message_bytes"),
                       ("pause_together", "pause_together")):
        if getattr(args, flag) is not None:
            setattr(policy, attr, getattr(args, flag))
    policy.check()
    return policy


def run(args) -> int:
    from .policy import AuditLog, PolicyError
    from .service import AgentService, ListenError, build_server, install_test_hold
    try:
        policy = policy_from_args(args)
        audit = AuditLog(None if args.audit_log == "-" else args.audit_log)
        delay = float(os.environ.get("EXRAY_AGENT_TEST_DELAY_S", "0") or 0)
        service = AgentService(policy, audit, host=args.host_name, test_delay_s=delay)
        server, addr = build_server(service, args.listen, token_file=args.token_file, tls_cert=args.tls_cert,
                                    tls_key=args.tls_key, client_ca=args.client_ca)
    except (PolicyError, ListenError, OSError) as e:
        print(f"error: exray agent: {e}", file=sys.stderr)
        return 1
    hold = float(os.environ.get("EXRAY_AGENT_TEST_HOLD_S", "0") or 0)
    if hold:
        install_test_hold(hold)
    if args.listen.startswith("tcp:") and args.token_file and not args.tls_cert:
        print("warning: bearer tokens travel in clear without --tls-cert/--tls-key; use them off "
              "trusted networks", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    audit.write(method="start", who="agent", listen=addr, outcome="serving",
                allow_exe=policy.allow_exe, allow_uid=policy.allow_uid, allow_cgroup=policy.allow_cgroup)
    print(f"listening on {addr}", flush=True)
    stop.wait()
    # In-flight pauses finish (each bounded by its deadline); new calls are refused.
    server.stop(grace=policy.max_pause_deadline_s + 1).wait()
    audit.write(method="stop", who="agent", outcome="stopped")
    audit.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="exray agent", description="Serve this machine's Go processes to Ex-Ray.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
