"""The `sovereign` command: run services, the embedded broker, the demo, and submit jobs."""
