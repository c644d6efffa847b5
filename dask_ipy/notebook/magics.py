"""IPython magics: ``%dsched`` starts, joins, shows and stops a cluster; ``%%dget``
computes a cell's value on it.

    %dsched start ──▶ ipyparallel.Client ──▶ dask_client_from_ipclient ─┐
    %dsched connect ADDRESS ──▶ Client(ADDRESS) ────────────────────────┴▶ active Client
    %%dget ──▶ run the cell ──▶ its last value ──▶ active Client ──▶ the cell's output
                                 graph dict        get(graph, keys)
                                 collection(s)     compute(..., sync=True)
                                 Future(s)         gather
    %dsched status ──▶ widget.Monitor (a notebook) or its text (a terminal)

Everything here goes through the public API of dask_ipy (imported from the modules
that define it, when first needed); the scheduler is never reached into.  One `DaskMagics` instance per shell holds the active client.  The
ipyparallel client is needed only to boot: it is closed once the workers are up.
"""

from __future__ import annotations

import ast
import re
import shlex
import threading
from collections.abc import Mapping

from IPython.core.error import UsageError
from IPython.core.magic import (Magics, line_cell_magic, line_magic, magics_class,
                                no_var_expand)
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

NO_CLIENT = ("no active dask_ipy scheduler: run `%dsched start` (boot one on the "
             "running ipcluster) or `%dsched connect ADDRESS` first")

ACTIONS = ("status", "start", "connect", "stop", "restart")
IPCLUSTER_CONNECT_TIMEOUT = 10.0   # seconds to find a running ipcluster, as ipyparallel
# Options of `%dsched start` (dest, flag): named when they cannot be applied.
START_OPTIONS = (("n", "-n"), ("new", "--new"), ("profile", "--profile"),
                 ("profile_dir", "--profile-dir"), ("cluster_id", "--cluster-id"),
                 ("url", "--url"), ("targets", "--targets"), ("nthreads", "--nthreads"),
                 ("memory_limit", "--memory-limit"), ("resources", "--resources"),
                 ("scheduler", "--scheduler"))


def _at_least_one(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"expected a whole number of at least 1, got {text!r}")
    return n


# ---------------------------------------------------------------- pure helpers

def parse_targets(spec):
    """Engines named on the command line: ``'all'``, a list of ids or a slice.

    >>> parse_targets('all'), parse_targets('0,2,5-7'), parse_targets('1::2')
    ('all', [0, 2, 5, 6, 7], slice(1, None, 2))
    """
    spec = (spec or "all").strip()
    if spec == "all":
        return "all"
    if ":" in spec:
        try:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
        except ValueError:
            parts = []
        if not 2 <= len(parts) <= 3:
            raise UsageError(f"--targets: bad slice {spec!r}")
        return slice(*parts)
    ids = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"--targets: expected 'all', ids like '0,2,5-7' or a "
                             f"slice like '::2', got {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        ids.extend(range(lo, hi + 1))
    return ids


def resolve_targets(targets, ids):
    """Engine ids for ``targets`` among the engines ``ids`` that are up."""
    if targets == "all":
        return "all"
    if isinstance(targets, slice):
        chosen = list(ids)[targets]
    else:
        missing = [t for t in targets if t not in ids]
        if missing:
            raise UsageError(f"--targets: no engine with id {missing} "
                             f"(engines up: {list(ids)})")
        chosen = list(targets)
    if not chosen:
        raise UsageError(f"--targets selects no engine (engines up: {list(ids)})")
    return chosen


def snapshot(client, timeout=5.0):
    """The next monitor snapshot of ``client``'s scheduler (None if none comes)."""
    got = threading.Event()
    box = []

    def take(snap):
        if not box:
            box.append(snap)
            got.set()
    client.subscribe_monitor(take)
    try:
        got.wait(timeout)
    finally:
        client.unsubscribe_monitor(take)
    return box[0] if box else None


def _resolve_key(token, graph):
    """A key of ``graph`` from a command-line word: the word itself, the Python
    literal it spells (``1``, ``('x', 0)``), or either of these once unquoted."""
    candidates = [token]
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        candidates.append(token[1:-1])
    for word in candidates:
        if word in graph:
            return word
        try:
            value = ast.literal_eval(word)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        try:
            if value in graph:
                return value
        except TypeError:                  # unhashable: not a key
            pass
    return candidates[-1]


def _kind(value):
    from ..client.futures import Future

    if isinstance(value, Mapping):
        return "graph"
    if isinstance(value, Future):
        return "future"
    from dask.base import is_dask_collection

    if is_dask_collection(value):
        return "collection"
    return None


def dget(client, value, keys=(), asynchronous=False):
    """Compute ``value`` on ``client`` as ``%%dget`` does.

    ``value``: a graph dict (with ``keys``, those keys: one key gives its value,
    several a ``{key: value}`` dict; without, ``{key: value}`` of the graph's
    output keys), a dask collection (its computed value), a Future (its value), or a
    list/tuple of these (a list of results; other items pass through).
    ``asynchronous``: Futures in the same shapes instead of values.
    """
    __tracebackhide__ = True
    kind = _kind(value)
    if keys and kind != "graph":
        raise UsageError(f"KEYs select keys of a graph dict; the cell's value is "
                         f"a {type(value).__name__}")
    if kind == "graph":
        return _dget_graph(client, value, keys, asynchronous)
    if kind is not None:
        return _dget_list(client, [value], asynchronous)[0]
    if isinstance(value, (list, tuple)) and (not value or any(map(_kind, value))):
        return _dget_list(client, list(value), asynchronous)
    raise UsageError("%%dget computes a graph dict, a dask collection, Futures or a "
                     f"list of them; the cell's last value is {type(value).__name__}"
                     + (" (does the cell end with an expression?)"
                        if value is None else ""))


def _dget_graph(client, graph, keys, asynchronous):
    __tracebackhide__ = True
    if keys:
        wanted = [_resolve_key(k, graph) for k in keys]
    else:
        from ..graph import dependencies, normalize, output_keys

        wanted = output_keys(dependencies(normalize(graph)))
    missing = [k for k in wanted if k not in graph]
    if missing:
        shown = ", ".join(map(repr, list(graph)[:8])) + (", ..." if len(graph) > 8
                                                          else "")
        raise UsageError(f"%%dget: {', '.join(map(repr, missing))} "
                         f"{'is not a key' if len(missing) == 1 else 'are not keys'} "
                         f"of the cell's graph (its keys: {shown})")
    if asynchronous:
        from dask.delayed import Delayed

        values = client.compute([Delayed(k, graph) for k in wanted])
    else:
        values = client.get(graph, list(wanted))
    if keys and len(wanted) == 1:
        return values[0]
    return dict(zip(wanted, values))


def _dget_list(client, items, asynchronous):
    """Results for a list of items, collections computed together."""
    __tracebackhide__ = True
    out = list(items)
    colls = [i for i, v in enumerate(items) if _kind(v) == "collection"]
    if colls:
        results = client.compute([items[i] for i in colls], sync=not asynchronous)
        for i, r in zip(colls, results):
            out[i] = r
    by_client = {}                       # Futures gathered by their own client
    for i, v in enumerate(items):
        kind = _kind(v)
        if kind == "graph":
            out[i] = _dget_graph(client, v, (), asynchronous)
        elif kind == "future" and not asynchronous:
            by_client.setdefault(v.client or client, []).append(i)
    for owner, where in by_client.items():
        for i, value in zip(where, owner.gather([items[i] for i in where])):
            out[i] = value
    return out


# ---------------------------------------------------------------- the magics

@magics_class
class DaskMagics(Magics):
    """``%dsched`` and ``%%dget``, with the active client of this shell."""

    def __init__(self, shell):
        super().__init__(shell)
        self.client = None          # the active dask_ipy Client (set by %dsched)
        self.ipcluster = None       # the ipcluster `%dsched start --new` started
        self.monitors = []          # widgets shown by `%dsched status`

    # ------------------------------------------------------------ active client

    def active_client(self):
        """The client ``%%dget`` uses: the one ``%dsched`` made, else the default
        dask_ipy Client of this process; UsageError if there is none."""
        if self.client is not None and self.client.status != "closed":
            return self.client
        from ..client.default import default_clients

        # The magics block; an asynchronous client's methods would hand back
        # coroutines.
        for client in reversed(default_clients()):
            if not client.asynchronous:
                return client
        raise UsageError(NO_CLIENT)

    def _activate(self, client):
        self._forget(close=True)
        self.client = client

    def _forget(self, close):
        """Drop the active client (closing it if ``close``) and what hangs on it."""
        for m in self.monitors:          # they keep showing their last state
            try:
                m.stop()
            except Exception:
                pass
        self.monitors = []
        client, self.client = self.client, None
        cluster, self.ipcluster = self.ipcluster, None
        if close and client is not None:
            client.close()
        if close and cluster is not None:      # started for this shell: ends with it
            cluster.stop_cluster_sync()

    # ------------------------------------------------------------ %dsched

    @magic_arguments()
    @argument("action", nargs="?", default="status", choices=ACTIONS,
              help="start: boot dask_ipy on the running ipcluster; connect: join a "
                   "running scheduler; status (default): show the live widget; "
                   "stop: shut the scheduler and workers down (engines keep "
                   "running); restart: forget all tasks and drop all data")
    @argument("address", nargs="?", metavar="ADDRESS",
              help="for connect: the scheduler's address for clients "
                   "(tcp://host:port) or its connection file")
    @argument("-n", type=_at_least_one, default=None, metavar="N",
              help="start: wait until the ipcluster has N engines up first (it "
                   "does not start engines: see --new)")
    @argument("--new", type=_at_least_one, default=None, metavar="N",
              help="start: start a new local ipcluster of N engines first (stopped "
                   "by `%%dsched stop`)")
    @argument("--profile", default=None,
              help="start: the ipcluster's IPython profile (default: 'default')")
    @argument("--profile-dir", default=None,
              help="start: the ipcluster's profile directory")
    @argument("--cluster-id", default=None,
              help="start: the ipcluster's cluster id")
    @argument("--url", default=None, metavar="FILE",
              help="start: the ipcluster's client connection file "
                   "(ipcontroller-client.json)")
    @argument("--targets", default=None,
              help="start: engines to run workers on: 'all' (default), ids like "
                   "'0,2,5-7', or a slice like '::2'")
    @argument("--nthreads", type=_at_least_one, default=None,
              help="start: threads per worker (default 1)")
    @argument("--resources", default=None, metavar='"NAME=AMOUNT,..."',
              help="start: what each worker has, e.g. \"GPU=1\": tasks submitted "
                   "with resources= run only where these suffice")
    @argument("--memory-limit", default=None, metavar="LIMIT",
              help="start: each worker's memory limit: 'auto' (default: the host's "
                   "memory shared among its workers), bytes, '2GiB', a fraction "
                   "of the host such as 0.25, or 'none'")
    @argument("--scheduler", default=None, choices=("engine", "local", "inprocess"),
              help="start: where the scheduler runs: 'engine' (default: its own "
                   "process on the host of the first target engine), 'local' (a "
                   "subprocess here) or 'inprocess' (a thread here, for debugging)")
    @argument("--timeout", type=float, default=None,
              help="start/connect: seconds to wait for the cluster (default 60 to "
                   "start, 10 to connect)")
    @line_magic
    def dsched(self, line=""):
        """Start, join, show, restart or stop the dask_ipy scheduler of this notebook.

        %dsched start [-n N | --new N] [--profile P] [--cluster-id ID] [--url FILE]
                      [--targets SPEC] [--nthreads K] [--memory-limit LIMIT]
                      [--resources SPEC] [--scheduler WHERE]
            Boot a scheduler and one worker per engine of the ipcluster that is
            already running (`ipcluster start`, or `ipyparallel.Cluster`), and make
            its client the active one.  Returns the client: `c = %dsched start`.
            -n N waits until that ipcluster has N engines; --new N starts a local
            ipcluster of N engines first (stopped again by `%dsched stop`).
        %dsched connect ADDRESS
            Join a running scheduler (address or connection file); returns the client.
        %dsched [status]
            The live widget of workers and tasks (plain text outside a notebook).
        %dsched restart
            Forget every task and drop all data; workers stay.
        %dsched stop
            Shut the scheduler and its workers down; the engines keep running.
        """
        args = parse_argstring(self.dsched, line)
        if args.address is not None and args.action != "connect":
            raise UsageError(f"%dsched {args.action} takes no ADDRESS")
        return getattr(self, "_dsched_" + args.action)(args)

    def _dsched_start(self, args):
        given = [flag for dest, flag in START_OPTIONS if getattr(args, dest) is not None]
        if self.client is not None and self.client.status != "closed":
            if given:
                raise UsageError(
                    f"already connected to {self.client.address}: {', '.join(given)} "
                    f"not applied (`%dsched stop` first to boot a new one)")
            print(f"already connected to {self.client.address} "
                  f"(`%dsched stop` first to boot a new one)")
            return self.client
        if args.new is not None and args.n is not None:
            raise UsageError("-n N waits for the engines of a running ipcluster, "
                             "--new N starts one: give one of them")
        targets = parse_targets(args.targets)
        if args.timeout is None:
            args.timeout = 60.0
        cluster = None
        if args.new is not None:
            cluster, ipclient = self._new_ipcluster(args)
        else:
            ipclient = self._ipclient(args)
        try:
            n = args.n or args.new or 1
            up = len(ipclient.ids)
            if up < n:
                print(f"{up} of {n} engines up; waiting up to {args.timeout:g} s for "
                      f"the rest (-n N waits until the ipcluster has N engines: it "
                      f"starts none)", flush=True)
            try:
                ipclient.wait_for_engines(n, timeout=args.timeout, interactive=False)
            except TimeoutError:
                raise UsageError(
                    f"only {len(ipclient.ids)} of {n} engines came up within "
                    f"{args.timeout:g} s: -n N waits until the ipcluster has N "
                    f"engines; start more (`ipcluster engines -n K`), pass a smaller "
                    f"-n, or `%dsched start --new N` for a new local ipcluster") \
                    from None
            targets = resolve_targets(targets, ipclient.ids)
            options = {"timeout": args.timeout}
            for name in ("nthreads", "memory_limit", "resources", "scheduler"):
                if getattr(args, name) is not None:
                    options[name] = getattr(args, name)
            from ..bootstrap import dask_client_from_ipclient

            try:
                client = dask_client_from_ipclient(ipclient, targets, **options)
            except ValueError as e:
                raise UsageError(str(e)) from None
        except BaseException:
            if cluster is not None:
                cluster.stop_cluster_sync()
            raise
        finally:
            ipclient.close()
        self._activate(client)
        self.ipcluster = cluster
        return client

    def _ipclient(self, args):
        """A client of the running ipcluster; gives up as ipyparallel does."""
        import ipyparallel

        kw = {"timeout": min(args.timeout, IPCLUSTER_CONNECT_TIMEOUT)}
        for name in ("profile", "profile_dir", "cluster_id"):
            if getattr(args, name) is not None:
                kw[name] = getattr(args, name)
        try:
            return ipyparallel.Client(args.url, **kw)
        except (OSError, TimeoutError) as e:
            raise UsageError(
                f"could not connect to an ipcluster: {e}\nStart one first "
                "(`%dsched start --new 4` here, `ipcluster start -n 4`, or "
                "ipyparallel.Cluster(n=4).start_cluster_sync()) or name it with "
                "--profile, --cluster-id or --url.") from None

    def _new_ipcluster(self, args):
        """A new local ipcluster of ``args.new`` engines and a client of it."""
        import ipyparallel

        if args.url is not None or args.cluster_id is not None:
            raise UsageError("--new starts its own ipcluster: --url and --cluster-id "
                             "name a running one")
        kw = {"n": args.new}
        for name in ("profile", "profile_dir"):
            if getattr(args, name) is not None:
                kw[name] = getattr(args, name)
        cluster = ipyparallel.Cluster(**kw)
        try:
            ipclient = cluster.start_and_connect_sync(activate=False)
        except BaseException:
            cluster.stop_cluster_sync()
            raise
        print(f"started a local ipcluster of {args.new} engines "
              f"(cluster id {cluster.cluster_id}); `%dsched stop` stops it",
              flush=True)
        return cluster, ipclient

    def _dsched_connect(self, args):
        if args.address is None:
            raise UsageError("%dsched connect ADDRESS: the scheduler's address "
                             "(tcp://host:port) or its connection file")
        from ..client.client import Client

        timeout = args.timeout or 10.0
        try:
            client = Client(args.address, timeout=timeout)
        except TimeoutError:
            raise UsageError(
                f"could not connect to {args.address}: no scheduler answered within "
                f"{timeout:g} s (is it running? a connection file may be left by a "
                "scheduler that died; --timeout S waits longer)") from None
        except (OSError, ValueError) as e:
            raise UsageError(f"could not connect to {args.address}: {e}") from None
        self._activate(client)
        return client

    def _dsched_status(self, args):
        client = self.active_client()
        from .widget import Monitor, snapshot_text

        if getattr(self.shell, "kernel", None) is None:     # a terminal: no widgets
            print(snapshot_text(snapshot(client), client.status))
            return
        from IPython.display import display

        monitor = Monitor(client)
        self.monitors.append(monitor)
        display(monitor)

    def _dsched_restart(self, args):
        client = self.active_client()
        client.restart()
        print(f"restarted {client.address}: every task forgotten, all data dropped")

    def _dsched_stop(self, args):
        from ..client.default import default_clients

        client = self.active_client()
        address, scheduler_id = client.address, client.scheduler_id
        client.shutdown()
        cluster = self.ipcluster
        self._forget(close=False)
        # The other default clients of this scheduler close now, not whenever its
        # last word reaches them: `%%dget` then finds no client of a dead scheduler.
        # (An asynchronous one closes on the scheduler's last word.)
        for other in default_clients():
            if other.scheduler_id == scheduler_id and not other.asynchronous:
                other.close()
        print(f"stopped the scheduler at {address} and its workers")
        if cluster is not None:
            cluster.stop_cluster_sync()
            print(f"stopped the ipcluster {cluster.cluster_id} that `%dsched start "
                  f"--new` started")

    # ------------------------------------------------------------ %%dget

    @magic_arguments()
    @argument("-o", "--output", default=None, metavar="NAME",
              help="also store the result in the variable NAME")
    @argument("--async", dest="asynchronous", action="store_true",
              help="return Futures at once instead of waiting for values")
    @argument("keys", nargs="*", metavar="KEY",
              help="keys of the graph to compute (default: its output keys); "
                   "quote tuple keys: \"('x', 0)\"")
    @no_var_expand
    @line_cell_magic
    def dget(self, line="", cell=None):
        """Compute the cell's last value on the active dask_ipy scheduler.

        %%dget [KEY ...] [-o NAME] [--async]
            Run the cell; its last value is computed on the cluster and becomes the
            cell's output:
              a graph dict  -> with KEYs, those keys (one key: its value, several:
                               {key: value}); without, {key: value} of its outputs
              a dask collection -> its value;   a Future -> its value
              a list of these -> a list of results
        %dget [-o NAME] [--async] EXPR [KEY ...]
            The same for the value of the expression EXPR.

        A task's error is raised here with its remote traceback.
        """
        __tracebackhide__ = True
        if cell is None:
            args, expr, keys = self._parse_line(line)
        else:
            args = parse_argstring(self.dget, line)
            keys = args.keys
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"-o NAME: {args.output!r} is not a variable name")
        client = self.active_client()
        if cell is None:
            self._check_names(expr)
        value = self._run_cell(expr if cell is None else cell)
        try:
            result = dget(client, value, keys, args.asynchronous)
        except Exception as e:
            from ..errors import without_machinery

            # A task's error: its own frames, not those of the client's calls that
            # brought it here, nor of the worker and dask's task calling.
            raise e.with_traceback(without_machinery(e.__traceback__))
        if args.output is not None:
            self.shell.user_ns[args.output] = result
        return result

    def _check_names(self, expr):
        """A UsageError naming what ``%dget EXPR`` refers to and nobody defined (rather
        than a NameError whose traceback has no source to show)."""
        import builtins

        shell = self.shell
        tree = ast.parse(expr, mode="eval")
        bound = {n.id for n in ast.walk(tree)
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):                 # lambdas' and comprehensions'
            if isinstance(node, ast.arg):
                bound.add(node.arg)
        unknown = sorted({n.id for n in ast.walk(tree)
                          if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                          and n.id not in bound and n.id not in shell.user_ns
                          and n.id not in shell.user_global_ns
                          and not hasattr(builtins, n.id)})
        if unknown:
            raise UsageError(f"%dget {expr}: {', '.join(map(repr, unknown))} "
                             f"{'is' if len(unknown) == 1 else 'are'} not defined")

    def _parse_line(self, line):
        """(options, EXPR, [KEY]) of the line form: options come first; EXPR is the
        longest run of words that is a Python expression; the other words are keys."""
        words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", line)]
        i = 0
        opts = []
        while i < len(words):
            w = words[i][2]
            if w in ("-o", "--output") and i + 1 < len(words):
                opts += [w, words[i + 1][2]]
                i += 2
            elif w == "--async" or w.startswith(("--output=", "-o")):
                opts.append(w)
                i += 1
            else:
                break
        args = parse_argstring(self.dget, " ".join(opts))
        rest = words[i:]
        if not rest:
            raise UsageError("%dget EXPR [KEY ...]: give an expression to compute")
        start = rest[0][0]
        for j in range(len(rest), 0, -1):
            expr = line[start:rest[j - 1][1]]
            try:
                compile(expr, "<dget>", "eval")
            except SyntaxError:
                continue
            tail = line[rest[j - 1][1]:]
            try:
                keys = shlex.split(tail)
            except ValueError:
                keys = tail.split()
            return args, expr, keys
        raise UsageError(f"%dget: {line[start:]!r} does not start with a Python "
                         "expression")

    def _run_cell(self, cell):
        """Run ``cell`` in the user namespace; the value of its last expression."""
        __tracebackhide__ = True
        shell = self.shell
        code = shell.transform_cell(cell)
        tree = ast.parse(code)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        # Cached under a cell name, so tracebacks (even remote ones) show its lines.
        name = shell.compile.cache(code, shell.execution_count, raw_code=cell)
        if tree.body:
            exec(shell.compile(tree, name, "exec"), shell.user_global_ns, shell.user_ns)
        if last is None:
            return None
        return eval(shell.compile(last, name, "eval"), shell.user_global_ns,
                    shell.user_ns)


_magics = {}     # {shell: DaskMagics}


def load_ipython_extension(ip):
    """``%load_ext dask_ipy``: register ``%dsched`` and ``%%dget``/``%dget``."""
    if ip in _magics:
        return
    magics = DaskMagics(ip)
    ip.register_magics(magics)
    _magics[ip] = magics


def unload_ipython_extension(ip):
    """Close this shell's client (the cluster keeps running) and remove the magics."""
    magics = _magics.pop(ip, None)
    if magics is None:
        return
    magics._forget(close=True)
    for kind in ("line", "cell"):
        for name in ("dsched", "dget"):
            ip.magics_manager.magics[kind].pop(name, None)
    ip.magics_manager.registry.pop(type(magics).__name__, None)
