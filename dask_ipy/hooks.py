"""Where a lower layer calls up.  A worker knows nothing of clients and a client
nothing of workers, yet a task asks for a client (`get_client`, dask's compute inside
a task), an actor is made on a worker and called through a client, and a client
given no address starts a cluster: the package plugs these functions in when it is
imported (see ``__init__``)."""

task_client = None      # (worker) -> the Client the tasks of that worker use
task_host = None        # () -> (worker, key) of the task on this thread; ValueError if none
current_client = None   # () -> the Client code here uses (as `get_client` chooses)
seceded = None          # () -> a context manager: the task on this thread, if any,
                        # seceded for the block (a blocking get waiting inside a task)
actor_call_here = None  # (key, kind, name, args, kwargs) -> cf.Future of the reply of a
                        # call an actor's method makes to its own actor; None elsewhere
local_cluster = None    # (**kwargs) -> a LocalCluster started (for `Client()`)
