"""The "Python 3 (dask_ipy)" kernelspec ships in the wheel and works once installed.

The package is built into a wheel and installed (``--no-deps``) into a fresh
virtualenv made for this module; that virtualenv borrows the dependencies of the
running interpreter through a ``.pth`` line, so the test needs no network and takes a
few seconds.  Jupyter then runs from the new virtualenv, as it does for a user who
installed dask_ipy next to it."""

import glob
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

from helpers import ROOT

KERNEL_JSON = "share/jupyter/kernels/dask_ipy/kernel.json"


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=100, **kw)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def clean_env(venv):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "JUPYTER_PATH", "JUPYTER_DATA_DIR")}
    env["VIRTUAL_ENV"] = venv
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    # User-wide kernelspecs must not hide or stand in for the installed one.
    env["JUPYTER_DATA_DIR"] = os.path.join(venv, "user-data")
    return env


def run_in(venv, cmd, env=None):
    """Run in the virtualenv, from its directory: `python -c` puts the current
    directory first on sys.path, and the source tree must not stand in for the
    installed copy."""
    return run(cmd, env=env or clean_env(venv), cwd=venv)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, virtualenv directory, its python) with dask_ipy installed."""
    tmp = tmp_path_factory.mktemp("kernelspec")
    wheels = tmp / "wheels"
    # With the build backend at hand, build offline; else pip fetches it.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation,
         "-w", str(wheels), ROOT])
    (wheel,) = glob.glob(str(wheels / "dask_ipy-*.whl"))
    venv = str(tmp / "venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = os.path.join(venv, "bin", "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--no-index", wheel])
    purelib = run_in(venv, [python, "-c",
                            "import sysconfig; print(sysconfig.get_path('purelib'))"]
                     ).strip()
    with open(os.path.join(purelib, "zz-borrowed-dependencies.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    return wheel, venv, python


def test_wheel_contains_kernelspec(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (path,) = [n for n in names if n.endswith(KERNEL_JSON)]
        spec = json.loads(z.read(path))
    assert path == f"dask_ipy-0.1.0.data/data/{KERNEL_JSON}"
    assert spec["argv"][:3] == ["python", "-m", "ipykernel_launcher"]
    assert "--ext=dask_ipy" in spec["argv"]
    assert spec["language"] == "python"


def test_installed_copy_is_the_one_imported(installed):
    _, venv, python = installed
    out = run_in(venv, [python, "-c", "import dask_ipy, sys; print(dask_ipy.__file__); "
                                      "print(sys.prefix)"])
    module, prefix = out.split()
    assert module.startswith(venv + os.sep), module
    assert prefix == venv


def test_kernelspec_list_shows_it(installed):
    _, venv, python = installed
    # `jupyter kernelspec list`, run by the virtualenv's interpreter.
    out = run_in(venv, [python, "-m", "jupyter_client.kernelspecapp", "list", "--json"])
    specs = json.loads(out)["kernelspecs"]
    assert "dask_ipy" in specs
    assert specs["dask_ipy"]["resource_dir"] == os.path.join(
        venv, "share", "jupyter", "kernels", "dask_ipy")
    assert specs["dask_ipy"]["spec"]["display_name"] == "Python 3 (dask_ipy)"


KERNEL_SCRIPT = textwrap.dedent("""
    import json, sys
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="dask_ipy", startup_timeout=60)
    out = []
    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append(msg["content"]["ename"] + ": " + msg["content"]["evalue"])
    try:
        code = ("import sys, dask_ipy\\n"
                "ip = get_ipython()\\n"
                "print(json.dumps({'executable': sys.executable,"
                " 'module': dask_ipy.__file__,"
                " 'line': sorted(m for m in ip.magics_manager.magics['line']"
                "                if m in ('dsched', 'dget')),"
                " 'cell': sorted(m for m in ip.magics_manager.magics['cell']"
                "                if m in ('dsched', 'dget'))}))")
        kc.execute_interactive("import json", timeout=30, output_hook=hook)
        kc.execute_interactive(code, timeout=30, output_hook=hook)
        kc.execute_interactive("%dget {'x': 1}", timeout=30, output_hook=hook)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    print(json.dumps(out))
""")


def test_kernel_has_magics_without_load_ext(installed):
    _, venv, python = installed
    env = clean_env(venv)
    env["JUPYTER_PATH"] = os.path.join(venv, "share", "jupyter")
    out = run_in(venv, [python, "-c", KERNEL_SCRIPT], env=env)
    lines = json.loads(out.strip().splitlines()[-1])
    info = json.loads(lines[0])
    assert info["executable"] == python
    assert info["module"].startswith(venv + os.sep)
    assert info["line"] == ["dget", "dsched"]
    assert info["cell"] == ["dget"]
    # The magic is live: with no scheduler it says how to get one.
    assert lines[1].startswith("UsageError: no active dask_ipy scheduler")
