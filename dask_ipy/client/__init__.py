"""The client: a pure state machine (`state`) inside a ZeroMQ shell (`shell`), under
the user's API (`client`); Futures, `wait` and the Executor (`futures`), call keys
(`calls`) and the default client (`default`)."""
