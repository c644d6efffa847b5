"""The worker: a pure state machine (`state`) inside a ZeroMQ shell (`server`)."""
