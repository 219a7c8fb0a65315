"""The verification kit: what the tests, the demo and the benchmark use to drive a running marketplace and
judge it (workloads of signed requests, watchers and a tracker of every job's events, the history read back
from topics and databases, and the invariants checked over it). It imports no command."""
