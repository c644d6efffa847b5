"""The scheduler: a pure state machine (`state`) inside a ZeroMQ shell (`server`)."""
