"""The client: a pure state machine (`state`) inside a ZeroMQ shell (`shell`), under
the user's API (`client`, and `cluster` for the cluster as a whole), blocking or
asynchronous through the drivers of `waits`; Futures, `wait` and the Executor
(`futures`), call keys (`calls`) and the default client (`default`)."""
