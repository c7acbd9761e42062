"""Chat messages to sampler requests, and the tool-call text protocol, for every entry point."""
