"""agent-run's start-up hook for Python workers (put on PYTHONPATH for Python targets only).

Python imports `sitecustomize` at start-up, before the agent's code; agent-run prepends this
directory to a Python target's PYTHONPATH (the mechanism `opentelemetry-instrument` and
`ddtrace-run` use for unmodified applications). It does one thing, then gets out of the way:

- **LiveKit's default health port.** `AgentServer()` in production mode (`agent.py start`)
  binds its HTTP health server to port 8081 unless the code passes `port=`, and there is no
  variable or flag to change it. Two workers of a pool, or a replacement next to the worker it
  replaces, cannot both bind it. When `livekit.agents.worker` is imported, the *default* (only
  the default: an explicit `port=` is kept) becomes `AGENT_RUN_PORT` when agent-run gave the
  worker a port (`--port-base`), else 0 (a free port, logged by the worker as "HTTP server
  listening on :PORT"). agent-run's own `--health` is the pool's health endpoint.

Then it removes its directory from `sys.path` and from `PYTHONPATH` (the agent's own
sub-processes do not inherit it), and runs the `sitecustomize` it shadows, if there is one.
It imports nothing but `os` and `sys` unless a shadowed `sitecustomize` exists (start-up
time: measured in bench/livekit_rollout.py's notes).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIVEKIT_DEFAULT_PORT = 8081


def _health_port() -> int:
    text = os.environ.get("AGENT_RUN_PORT", "")
    return int(text) if text.isdigit() else 0


# What we changed, so a process forked from agent-run's template interpreter (which
# imported LiveKit without AGENT_RUN_PORT) can point it at its own port: `rebind()`.
_changed: list[object] = []


def _replace_port_default(default: object, port: int) -> None:
    # A frozen dataclass `ServerEnvOption(dev_default=0, prod_default=8081)`, shared by every
    # AgentServer() that does not pass `port=`: changed in place, so each use sees it.
    if getattr(default, "prod_default", None) == _LIVEKIT_DEFAULT_PORT:
        object.__setattr__(default, "prod_default", port)
        _changed.append(default)


def _patch_livekit_worker(module: object) -> None:
    port = _health_port()
    server = getattr(module, "AgentServer", None)
    defaults = getattr(getattr(server, "__init__", None), "__kwdefaults__", None) or {}
    if defaults.get("port") == _LIVEKIT_DEFAULT_PORT:  # a plain int in some other version
        defaults["port"] = port
        _changed.append(defaults)
    else:
        _replace_port_default(defaults.get("port"), port)
    options = getattr(module, "ServerOptions", None)  # the older WorkerOptions spelling
    field = getattr(options, "__dataclass_fields__", {}).get("port")
    if field is not None:
        _replace_port_default(field.default, port)


def rebind() -> None:
    """This process's AGENT_RUN_PORT for the defaults we changed (called by a process forked
    from agent-run's template after it received its environment)."""
    port = _health_port()
    for default in _changed:
        if isinstance(default, dict):
            default["port"] = port
        else:
            object.__setattr__(default, "prod_default", port)


class _Loader:
    """Runs the real loader, then adjusts the module's defaults."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        try:
            _patch_livekit_worker(module)
        except Exception as error:  # never break the agent's import over a default
            sys.stderr.write(f"agent-run bootstrap: LiveKit port default unchanged: {error}\n")


class _Finder:
    """A meta path finder that only answers for `livekit.agents.worker`, and only once."""

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> object:
        if name != "livekit.agents.worker":
            return None
        sys.meta_path.remove(cls)  # type: ignore[arg-type]
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def _unlist() -> None:
    """Our directory off sys.path and PYTHONPATH, as if the agent had been started plainly."""
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    kept = [e for e in entries if os.path.abspath(e) != _HERE]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)


def _run_shadowed_sitecustomize() -> None:
    """The `sitecustomize` further down sys.path (Debian ships one), as Python would have."""
    if not any(
        os.path.isfile(os.path.join(entry or ".", "sitecustomize.py")) for entry in sys.path
    ):
        return
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    from importlib.util import module_from_spec

    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_unlist()
sys.modules["_agent_run_bootstrap"] = sys.modules[__name__]  # for rebind(), by a stable name
sys.meta_path.insert(0, _Finder)  # type: ignore[arg-type]
_run_shadowed_sitecustomize()
