"""The eBPF executor: a fixed BPF probe (probe.bpf.c) driven by a plan in maps.

plan.py        the probe's plan: pure data from the runtime layout
probe.py       StackProbe: the live object owning programs, maps, ring buffer, uprobes
records.py     the probe's records, parsed (pure)
executor.py    snapshot_process: pause, trigger, resume, then the same records as ptrace's
availability   why_unavailable(): what this machine lacks, for `auto` and the tests
"""
