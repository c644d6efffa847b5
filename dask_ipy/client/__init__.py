"""The client: Futures and the user's API (`client`, `futures`) over the scheduler."""
