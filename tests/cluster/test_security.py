"""Security: keys never leak, CURVE really gates and hides traffic, connection files."""

import json
import logging
import os
import pickle
import select
import socket
import stat
import threading

import pytest
import zmq

from dask_ipy import security as security_module
from dask_ipy.protocol import ProtocolError, Session
from dask_ipy.security import (
    Security,
    find_security,
    read_connection_file,
    remove_connection_file,
    runtime_dir,
    write_connection_file,
)

pytestmark = pytest.mark.timeout(30)

EPOCH = b"e" * 16


def test_libzmq_has_curve():
    """The CURVE tests below run everywhere: pyzmq's wheels bundle libsodium, so a
    libzmq without CURVE is a broken environment, not a reason to skip them."""
    assert zmq.has("curve"), f"libzmq {zmq.zmq_version()} was built without CURVE"


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    path = tmp_path / "runtime"
    monkeypatch.setenv("DASK_IPY_RUNTIME_DIR", str(path))
    return path


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def info_for(port_w, port_c, host="127.0.0.1", ident="abc123ef-0000", pid=4242):
    return {
        "address_to_workers": f"tcp://{host}:{port_w}",
        "address_to_clients": f"tcp://{host}:{port_c}",
        "id": ident,
        "pid": pid,
    }


# --- Security ----------------------------------------------------------------------


def test_temporary_keys_are_random_and_32_bytes():
    a, b = Security.temporary(), Security.temporary()
    assert len(a.key) == 32 and a.key != b.key
    assert a.encrypt is False


def test_dict_round_trip_is_json():
    s = Security.temporary()
    d = json.loads(json.dumps(s.to_dict()))
    assert d == {"key": s.key.hex(), "encrypt": False}
    assert Security.from_dict(d) == s
    assert Security.from_dict({"key": s.key}) == s
    assert Security.from_dict(s) is s
    assert pickle.loads(pickle.dumps(s)) == s  # travels over ipyparallel as an object


@pytest.mark.parametrize("bad", [{}, {"key": ""}, {"key": "zz"}, {"key": 5}, "key", None])
def test_from_dict_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        Security.from_dict(bad)


def test_key_never_shown(caplog):
    s = Security.temporary()
    secrets_as_text = [s.key.hex(), repr(s.key), str(s.key)]
    shown = [repr(s), str(s), f"{s}", repr([s]), repr({"security": s})]
    assert repr(s) == "Security(key=<hidden>, encrypt=False)"

    log = logging.getLogger("dask_ipy.test")
    with caplog.at_level(logging.DEBUG):
        log.info("starting with %s", s)
        log.info("settings %r", {"security": s})
        with pytest.raises(ValueError) as bad_hex:
            Security.from_dict({"key": s.key.hex() + "zz"})
        log.warning("rejected: %s", bad_hex.value)
        receiver = Session(s.key, b"scheduler", epoch=EPOCH)
        for frames in (Session(b"other", b"w", epoch=EPOCH).dumps([{"op": "x"}], b"scheduler"),
                       [b"x" * 32, b"y"]):
            with pytest.raises(ProtocolError) as rejected:
                receiver.loads(frames)
            log.warning("rejected: %s", rejected.value)
        shown += [repr(receiver), caplog.text]
    assert caplog.text
    for text in shown:
        for secret in secrets_as_text:
            assert secret not in text


def test_key_must_be_bytes():
    with pytest.raises(ValueError):
        Security(key=b"")
    with pytest.raises(ValueError):
        Security(key="a string")
    assert Security(key=bytearray(b"abc")).key == b"abc"


def test_encrypt_without_curve_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(zmq, "has", lambda capability: False)
    with pytest.raises(RuntimeError, match="CURVE"):
        Security.temporary(encrypt=True)
    assert Security.temporary(encrypt=False).encrypt is False


def test_without_encryption_sockets_speak_plain_with_a_password_derived_from_the_key(ctx):
    s = Security.temporary()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    s.configure_server(server)
    s.configure_client(client)
    assert server.mechanism == zmq.PLAIN and server.plain_server
    assert client.mechanism == zmq.PLAIN and not client.plain_server
    password = client.plain_password
    assert s.key not in password and s.key.hex().encode() not in password
    assert password == security_module._plain_password(bytes(s.key))
    assert password != security_module._plain_password(Security.temporary().key)


def test_server_keypair_is_derived_from_the_key(ctx):
    s = Security.temporary(encrypt=True)
    public, secret = security_module._server_keypair(s.key)
    assert security_module._server_keypair(bytes(s.key)) == (public, secret)
    assert zmq.curve_public(secret) == public and len(public) == 40
    assert security_module._server_keypair(Security.temporary().key)[0] != public
    server = ctx.socket(zmq.ROUTER)
    s.configure_server(server)
    assert server.mechanism == zmq.CURVE and server.curve_server


@pytest.fixture
def zap(ctx):
    """serve(security): answer ZAP requests in `ctx` with security.zap_verdict, on a
    thread, until the test ends."""
    stop = threading.Event()
    threads = []

    def serve(security):
        rep = ctx.socket(zmq.REP)
        rep.linger = 0
        rep.bind("inproc://zeromq.zap.01")

        def run():
            try:
                while not stop.is_set():
                    if not rep.poll(50):
                        continue
                    request = rep.recv_multipart()
                    ok, reason = security.zap_verdict(request)
                    rep.send_multipart([b"1.0", request[1], b"200" if ok else b"400",
                                        reason.encode(), b"", b""])
            finally:
                rep.close(linger=0)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    yield serve
    stop.set()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


def test_zap_admits_only_peers_with_the_password_of_the_key(ctx, zap):
    s = Security.temporary()
    zap(s)
    for client_security, admitted in ((s, True), (Security.temporary(), False),
                                      (None, False)):
        server, client, port = _pair(ctx, s, client_security)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send_multipart([b"hello"])
        assert bool(server.poll(300 if not admitted else 5000)) is admitted
        server.close(linger=0)
        client.close(linger=0)
    assert s.zap_verdict([b"1.0", b"1", b"", b"addr", b"", b"NULL"]) == (
        False, "mechanism b'NULL' not accepted")
    assert not s.zap_verdict([b"1.0"])[0]


def _pair(ctx, server_security, client_security, address="tcp://127.0.0.1"):
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (server, client):
        sock.linger = 0
    client.routing_id = b"client-1"
    if server_security is not None:
        server_security.configure_server(server)
    if client_security is not None:
        client_security.configure_client(client)
    port = server.bind_to_random_port(address)
    return server, client, port


def test_curve_with_the_right_key_carries_signed_messages(ctx):
    s = Security.temporary(encrypt=True)
    server, client, port = _pair(ctx, s, Security.from_dict(s.to_dict()))
    client.connect(f"tcp://127.0.0.1:{port}")
    sched = Session(s.key, b"scheduler", epoch=EPOCH)
    cli = Session(s.key, b"client-1", epoch=EPOCH)
    client.send_multipart(cli.dumps([{"op": "ping"}], b"scheduler"), copy=False)
    assert server.poll(5000)
    routing_id, *frames = server.recv_multipart(copy=False)
    assert sched.loads(frames, sender=routing_id.bytes) == [{"op": "ping"}]
    server.send_multipart([routing_id, *sched.dumps([{"op": "pong"}], to=b"client-1")])
    assert client.poll(5000)
    assert cli.loads(client.recv_multipart()) == [{"op": "pong"}]


@pytest.mark.parametrize("client_kind", ["other key", "no curve"])
def test_curve_with_a_wrong_key_gets_nothing_through(ctx, client_kind):
    s = Security.temporary(encrypt=True)
    intruder = Security.temporary(encrypt=True) if client_kind == "other key" else None
    server, client, port = _pair(ctx, s, intruder)
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send_multipart([b"hello", b"world"])
    assert server.poll(300) == 0


class _Relay:
    """A TCP relay on loopback that records every byte it forwards."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.listener.settimeout(5)
        try:
            inbound, _ = self.listener.accept()
        except OSError:
            return
        outbound = socket.create_connection(("127.0.0.1", self.target_port))
        peers = {inbound: outbound, outbound: inbound}
        try:
            while not self.stop.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    self.seen += data
                    peers[sock].sendall(data)
        except OSError:
            pass
        finally:
            inbound.close()
            outbound.close()

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("encrypt", [False, True])
def test_curve_hides_message_contents_on_the_wire(ctx, zap, encrypt):
    s = Security.temporary(encrypt=encrypt)
    zap(s)
    server, client, port = _pair(ctx, s, s)
    relay = _Relay(port)
    try:
        client.connect(f"tcp://127.0.0.1:{relay.port}")
        secret_text = b"the quick brown fox jumps over the lazy dog"
        client.send_multipart(Session(s.key, b"client-1", epoch=EPOCH).dumps(
            [{"op": "x", "v": secret_text}], b"scheduler"))
        assert server.poll(5000)
        server.recv_multipart()
        assert (secret_text in relay.seen) is (not encrypt)
    finally:
        client.close(linger=0)
        relay.close()


# --- connection files ----------------------------------------------------------------


def test_runtime_dir_is_private_and_follows_the_environment(rundir):
    old = os.umask(0)
    try:
        path = runtime_dir()
    finally:
        os.umask(old)
    assert path == str(rundir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_runtime_dir_defaults_under_jupyter_runtime(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_IPY_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jrt"))
    assert runtime_dir() == os.path.join(str(tmp_path / "jrt"), "dask-ipy")
    assert os.path.isdir(tmp_path / "jrt" / "dask-ipy")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o377])
def test_connection_file_is_owner_only_and_round_trips(rundir, umask):
    s = Security.temporary()
    info = info_for(4444, 5555)
    old = os.umask(umask)
    try:
        path = write_connection_file(info, s)
    finally:
        os.umask(old)
    assert os.path.dirname(path) == str(rundir)
    assert os.path.basename(path) == "scheduler-4242-abc123ef.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_connection_file(path) == (info, s)
    assert json.load(open(path))["security"] == s.to_dict()
    assert os.listdir(rundir) == [os.path.basename(path)]  # no temporary left behind


def test_connection_file_at_an_explicit_path_replaces_the_old_one(tmp_path):
    path = str(tmp_path / "sched.json")
    first, second = Security.temporary(), Security.temporary()
    assert write_connection_file(info_for(1, 2), first, path) == path
    write_connection_file(info_for(1, 2), second, path)
    assert read_connection_file(path)[1] == second
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_connection_file_accepts_bytes_ids(rundir):
    path = write_connection_file(dict(info_for(1, 2), id=b"sched-77"), Security.temporary())
    assert read_connection_file(path)[0]["id"] == "sched-77"


def test_connection_file_rejects_unserializable_info_without_leaving_files(rundir):
    with pytest.raises(TypeError):
        write_connection_file(dict(info_for(1, 2), extra=object()), Security.temporary())
    assert not rundir.exists() or os.listdir(rundir) == []


def test_remove_connection_file_ignores_missing(tmp_path):
    path = write_connection_file(info_for(1, 2), Security.temporary(), str(tmp_path / "c.json"))
    remove_connection_file(path)
    remove_connection_file(path)
    assert not os.path.exists(path)


def test_read_connection_file_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"address_to_workers": "tcp://127.0.0.1:1"}')
    with pytest.raises(ValueError):
        read_connection_file(str(path))


# --- find_security -----------------------------------------------------------------


def _write(info, security, mtime=None):
    path = write_connection_file(info, security)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_find_security_exact_address(rundir):
    s = Security.temporary()
    _write(info_for(4444, 5555), s)
    _write(info_for(6666, 7777, ident="other"), Security.temporary())
    assert find_security("tcp://127.0.0.1:4444") == s
    assert find_security("tcp://127.0.0.1:5555") == s
    assert find_security("tcp://127.0.0.1:4445") is None
    assert find_security("ipc:///nowhere") is None
    assert find_security("not an address") is None


@pytest.mark.parametrize("advertised", ["127.0.0.1", "localhost", socket.gethostname()])
@pytest.mark.parametrize("asked", ["127.0.0.1", "localhost", socket.gethostname(), "LOCALHOST"])
def test_find_security_same_machine_under_other_names(rundir, advertised, asked):
    s = Security.temporary()
    _write(info_for(4444, 5555, host=advertised), s)
    assert find_security(f"tcp://{asked}:5555") == s
    assert find_security(f"tcp://{asked}:5556") is None


def test_find_security_does_not_match_another_host(rundir):
    _write(info_for(4444, 5555, host="192.0.2.10"), Security.temporary())
    assert find_security("tcp://127.0.0.1:5555") is None
    assert find_security("tcp://192.0.2.10:5555") is not None


def test_find_security_hostname_with_a_lan_address(rundir, monkeypatch):
    """A hostname resolving to the machine's LAN address is still this machine."""
    table = {"myhost": "10.1.2.3", "otherhost": "10.9.9.9", "localhost": "127.0.0.1"}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host in table:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], 0))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "gethostname", lambda: "myhost")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    mine, theirs = Security.temporary(), Security.temporary()
    _write(info_for(4444, 5555, host="myhost", ident="mine"), mine)
    _write(info_for(6666, 7777, host="otherhost", ident="theirs"), theirs)
    assert find_security("tcp://127.0.0.1:5555") == mine
    assert find_security("tcp://localhost:4444") == mine
    assert find_security("tcp://10.1.2.3:4444") == mine
    assert find_security("tcp://127.0.0.1:7777") is None
    assert find_security("tcp://10.9.9.9:7777") == theirs


def test_find_security_newest_file_wins(rundir):
    old, new = Security.temporary(), Security.temporary()
    _write(info_for(4444, 5555, ident="new"), new, mtime=2_000_000_000)
    _write(info_for(4444, 5555, ident="old"), old, mtime=1_000_000_000)
    assert find_security("tcp://localhost:4444") == new


def test_find_security_skips_corrupt_and_foreign_files(rundir, caplog):
    s = Security.temporary()
    _write(info_for(4444, 5555), s, mtime=1_000_000_000)
    (rundir / "scheduler-1-corrupt.json").write_text("{not json")
    (rundir / "scheduler-2-badkey.json").write_text(
        json.dumps(dict(info_for(4444, 5555), security={"key": "zz"}))
    )
    (rundir / "scheduler-3-nokey.json").write_text(json.dumps(info_for(4444, 5555)))
    (rundir / "scheduler-4-binary.json").write_bytes(b"\xff\xfe\x00")
    os.mkdir(rundir / "scheduler-5-dir.json")
    os.symlink(rundir / "missing", rundir / "scheduler-6-dangling.json")
    if os.getuid() == 0:
        foreign = rundir / "scheduler-7-foreign.json"
        write_connection_file(info_for(4444, 5555), Security.temporary(), str(foreign))
        os.chown(foreign, 65534, 65534)
    with caplog.at_level(logging.DEBUG, logger="dask_ipy"):
        assert find_security("tcp://127.0.0.1:4444") == s
    assert s.key.hex() not in caplog.text


def test_find_security_without_runtime_dir(rundir):
    assert not rundir.exists()
    assert find_security("tcp://127.0.0.1:4444") is None


def test_unresolvable_hosts_are_not_local():
    resolver = security_module._Resolver()
    assert not resolver.is_local("no-such-host.invalid")
    assert resolver.same_host("127.0.0.1", "localhost")
    assert not resolver.same_host("no-such-host.invalid", "localhost")


def test_connection_files_of_killed_schedulers_are_removed(tmp_path):
    import subprocess
    import sys

    from dask_ipy import Scheduler
    from dask_ipy.security import find_security, remove_stale_connection_files

    script = ("from dask_ipy import Scheduler; s = Scheduler(); "
              "print(s.connection_file, s.address_to_clients, flush=True); s.wait()")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        path, address = p.stdout.readline().split()
    finally:
        p.kill()
        p.wait(10)
        p.stdout.close()
    assert os.path.exists(path)                  # SIGKILL: it could not clean up
    # Files that are not judged: another host's, one without pid, a live one.
    directory = os.path.dirname(path)
    others = {}
    for name, content in [("elsewhere", {"pid": p.pid, "host": "another-host"}),
                          ("old", {"pid": p.pid}),
                          ("alive", {"pid": os.getpid(),
                                     "host": socket.gethostname()})]:
        others[name] = os.path.join(directory, f"scheduler-{name}.json")
        with open(others[name], "w") as f:
            json.dump({**content, "security": {"key": "00" * 32}}, f)
    # A new scheduler starting removes it; so does a key lookup.
    s = Scheduler()
    try:
        assert not os.path.exists(path) and os.path.exists(s.connection_file)
        assert all(os.path.exists(other) for other in others.values())
        os.utime(others["alive"], (0, 0))   # older than this process: pid reused
        assert find_security(address) is None
        assert not os.path.exists(others["alive"])
        assert remove_stale_connection_files() == []
        assert os.path.exists(others["elsewhere"]) and os.path.exists(others["old"])
    finally:
        s.close()
    for other in others.values():
        if os.path.exists(other):
            os.remove(other)
