"""The ``callrt`` command (also ``python -m callrt``): call, list, health-check and serve components.

::

    callrt call URL Component.method '<JSON args>'   # prints the result as JSON
    callrt list URL                                   # components, methods, signatures
    callrt health URL [Component]                     # exit code 0 only when SERVING
    callrt serve module:Class [module:Class ...] --listen URL [--listen URL] [--workers N] [--metrics-port P]

``URL`` is an endpoint (``tcp://host:port``, ``unix:///path``), several
separated by commas, a directory of Unix sockets (``unixdir:///run/cart``) or
an etcd registry (``etcd://127.0.0.1:2379/prefix/``, where ``serve --etcd``
registers). ``call`` reads the method's parameters from the server's
reflection (``callrt.Reflection``): the JSON arguments are an array (in
parameter order) or an object (by parameter name). They are sent as the
MessagePack of the JSON values, which the server converts to the method's
types (Structs, enums, datetimes, decimals, UUIDs from their JSON forms);
base64 strings where the schema says bytes become bytes first. A server with
reflection turned off is called with the array as it is.

``serve`` imports ``module`` from the current directory first (as ``python -m callrt`` and
uvicorn do), then from ``sys.path``. ``--metrics-port`` exposes the worker's OpenTelemetry
metrics for Prometheus (the ``prometheus`` extra); with ``--workers N``, worker ``i`` (0 to
N-1) on port ``P + i``.

Exit codes: 0 success; 1 the call failed (code, message and, where the server
sent it, its traceback are printed on stderr), or, for ``health``, anything but
SERVING; 2 a usage error (no such method, arguments that are not JSON).
"""

from __future__ import annotations

import base64
import importlib
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import anyio
import click
import msgspec

from . import call
from .client import Client
from .component import interface, not_retriable
from .endpoints import parse_endpoint
from .errors import CallrtError, RemoteError, UnknownMethod
from .health import HealthAPI
from .reflection import REFLECTION, MethodInfo, ReflectionAPI, ServiceInfo
from .registry import Registrar
from .resolvers import ConstantResolver, Resolver, UnixDirectoryResolver
from .runner import run

__all__ = ("main",)

_BACKENDS = click.Choice(["asyncio", "trio"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--backend", type=_BACKENDS, default="asyncio", show_default=True, help="The event loop.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds for the whole command.")
@click.pass_context
def main(ctx: click.Context, backend: str, timeout: float) -> None:
    """callrt: call, list, health-check and serve components."""
    ctx.obj = {"backend": backend, "timeout": timeout}


# -- call --------------------------------------------------------------------------------------


@main.command("call")
@click.argument("url")
@click.argument("method")
@click.argument("args", default="[]")
@click.pass_context
def call_command(ctx: click.Context, url: str, method: str, args: str) -> None:
    """Call COMPONENT.METHOD with ARGS (a JSON array, or an object by parameter name); print the result as JSON.

    A server stream's items are printed as they come, one JSON value per line.
    """
    component, _, name = method.rpartition(".")
    if not component or not name:
        _usage(f"{method!r} is not Component.method")
    try:
        given = msgspec.json.decode(args)
    except msgspec.DecodeError as exc:
        _usage(f"the arguments are not JSON: {exc}")
    if not isinstance(given, list | dict):
        _usage("the arguments are a JSON array (in parameter order) or an object (by parameter name)")
    result = _run(ctx, _call, url, component, name, given)
    if result is not _STREAMED:
        click.echo(msgspec.json.encode(result).decode())


_STREAMED = object()  # what _call returns once it has printed a stream's items


async def _call(client: Client, component: str, name: str, given: list[Any] | dict[str, Any]) -> Any:
    info = await _describe(client)
    described = None if info is None else info.component(component)
    method = None if described is None else next((m for m in described.methods if m.name == name), None)
    if info is not None and method is None:
        known = (
            f"it has {', '.join(m.name for m in described.methods)}"
            if described is not None
            else f"it serves {', '.join(c.name for c in info.components)}"
        )
        _usage(f"the server does not serve {component}.{name}: {known}")
    if method is None or method.params is None:  # no reflection, or a raw handler: send the array as it is
        if not isinstance(given, list):
            _usage(f"{component}.{name} is not described by the server: give the arguments as a JSON array")
        values = given
        count, required, retriable = len(given), len(given), False
    else:
        if method.stream in ("client", "bidirectional"):
            _usage(f"{component}.{name} takes a stream of the caller's items: it cannot be called from here")
        values = _arguments(method, given, info.defs if info is not None else {})
        count = len(method.params)
        required = next((i for i in range(count, 0, -1) if method.params[i - 1].required), 0)
        retriable = method.retriable
    streams = method is not None and method.stream == "server"
    stub = client.stub(_dynamic_interface(component, name, count, required, retriable, streams=streams))
    if streams:
        async for item in getattr(stub, name)(*values):
            click.echo(msgspec.json.encode(item).decode())
        return _STREAMED
    return await getattr(stub, name)(*values)


def _arguments(method: MethodInfo, given: list[Any] | dict[str, Any], defs: dict[str, Any]) -> list[Any]:
    """The JSON arguments in parameter order, bytes decoded from base64 where the schema says so."""
    assert method.params is not None
    params = method.params
    if isinstance(given, dict):
        unknown = sorted(set(given) - {p.name for p in params})
        if unknown:
            _usage(f"{method.name}() has no parameter {', '.join(map(repr, unknown))}: it takes {method.signature}")
        last = max((i for i, p in enumerate(params) if p.name in given), default=-1)
        values = []
        for p in params[: last + 1]:
            if p.name in given:
                values.append(given[p.name])
            elif not p.required and p.default is not msgspec.UNSET:
                values.append(p.default)  # before a later argument that was given: its default, as reflected
            else:
                _usage(f"{method.name}(): give {p.name!r} (it takes {method.signature})")
        given = values
    if len(given) > len(params):
        _usage(f"{method.name}() takes {len(params)} arguments, {len(given)} given: {method.signature}")
    missing = [p.name for p in params[len(given) :] if p.required]
    if missing:
        _usage(f"{method.name}(): missing {', '.join(map(repr, missing))} (it takes {method.signature})")
    return [from_json(value, p.schema, defs) for value, p in zip(given, params, strict=False)]


def from_json(value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """``value``, decoded from JSON, with base64 strings turned into bytes where ``schema`` has bytes.

    Every other conversion (Structs, enums, datetimes, decimals, UUIDs) is the server's:
    msgspec's typed decoder takes their JSON forms from MessagePack too.
    """
    schema = _resolve(schema, defs)
    if isinstance(value, str) and schema.get("contentEncoding") == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return value  # the server says what is wrong with it
    branches = schema.get("anyOf")
    if branches is not None:
        discriminator = schema.get("discriminator")
        if isinstance(discriminator, dict) and isinstance(value, dict):
            ref = discriminator.get("mapping", {}).get(value.get(discriminator.get("propertyName")))
            if ref is not None:
                return from_json(value, {"$ref": ref}, defs)
        for branch in branches:
            resolved = _resolve(branch, defs)
            if isinstance(value, str) and resolved.get("contentEncoding") == "base64":
                return from_json(value, resolved, defs)
        for branch in branches:
            resolved = _resolve(branch, defs)
            if _json_type(value) == resolved.get("type"):
                return from_json(value, resolved, defs)
        return value
    if isinstance(value, list):
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        out = []
        for i, item in enumerate(value):
            sub = prefix[i] if isinstance(prefix, list) and i < len(prefix) else items
            out.append(from_json(item, sub, defs) if isinstance(sub, dict) else item)
        return out
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        result = {}
        for key, item in value.items():
            sub = properties.get(key, extra)
            result[key] = from_json(item, sub, defs) if isinstance(sub, dict) else item
        return result
    return value


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        found = defs.get(str(schema["$ref"]).rpartition("/")[2])
        if not isinstance(found, dict):
            return {}
        schema, seen = found, seen + 1
    return schema


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    return "other"


def _dynamic_interface(
    component: str, name: str, count: int, required: int, retriable: bool, *, streams: bool = False
) -> type:
    """An ``@interface`` of one untyped method: ``count`` parameters, the last ``count - required`` optional.

    Its stub sends the arguments as a MessagePack array and decodes the result (or, when it
    ``streams``, each item) as any value.
    """

    async def method(*args: Any) -> Any: ...

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
    params += [
        inspect.Parameter(
            f"p{i}", inspect.Parameter.POSITIONAL_ONLY, default=None if i >= required else inspect.Parameter.empty
        )
        for i in range(count)
    ]
    method.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    method.__annotations__ = {"return": AsyncIterator[Any]} if streams else {}
    if not retriable:
        not_retriable(method)
    return interface(name=component)(type("Dynamic", (), {name: method}))


# -- list --------------------------------------------------------------------------------------


@main.command("list")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print the reflection's description as JSON.")
@click.pass_context
def list_command(ctx: click.Context, url: str, as_json: bool) -> None:
    """List the components and methods URL serves, with their signatures."""
    info = _run(ctx, _describe, url)
    if info is None:
        _fail(f"{url} does not answer {REFLECTION} (ServerOptions(reflection=False)?)")
    if as_json:
        click.echo(msgspec.json.encode(info).decode())
        return
    for component in info.components:
        click.echo(component.name)
        for method in component.methods:
            click.echo(f"  {method.signature}" + ("" if method.retriable else "  [not retriable]"))


async def _describe(client: Client) -> ServiceInfo | None:
    try:
        return await client.stub(ReflectionAPI).describe()
    except UnknownMethod:
        return None


# -- health ------------------------------------------------------------------------------------


@main.command("health")
@click.argument("url")
@click.argument("component", default="")
@click.pass_context
def health_command(ctx: click.Context, url: str, component: str) -> None:
    """Print COMPONENT's health at URL (the server's, without one); exit 0 only when SERVING."""
    status = _run(ctx, _check, url, component)
    click.echo(status)
    if status != "SERVING":
        sys.exit(1)


async def _check(client: Client, component: str) -> str:
    return await client.stub(HealthAPI).check(component)


# -- serve -------------------------------------------------------------------------------------


@main.command("serve")
@click.argument("components", nargs=-1, required=True)
@click.option("--listen", "listen", multiple=True, required=True, help="An endpoint URL; repeat for more.")
@click.option("--insecure", is_flag=True, help="Allow plaintext on a non-loopback TCP address.")
@click.option("--etcd", help="Register each endpoint in etcd while serving: etcd://host:port/prefix/.")
@click.option(
    "--advertise",
    metavar="HOST",
    help="With --etcd: the host name or IP address clients reach this server at, registered with each "
    "TCP endpoint's port (default: the address listened on; this machine's address for 0.0.0.0).",
)
@click.option("--no-reflection", is_flag=True, help="Do not answer callrt.Reflection.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes serving the same TCP ports (SO_REUSEPORT); SIGTERM drains them all.",
)
@click.option("--reuse-port", is_flag=True, help="Bind TCP endpoints with SO_REUSEPORT (each of --workers does).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Expose metrics for Prometheus at http://HOST:PORT/metrics (0: any free port); "
    "with --workers N, worker i on PORT+i. Needs the prometheus extra.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="The address --metrics-port listens on.")
@click.pass_context
def serve_command(
    ctx: click.Context,
    components: tuple[str, ...],
    listen: tuple[str, ...],
    insecure: bool,
    etcd: str | None,
    advertise: str | None,
    no_reflection: bool,
    workers: int,
    reuse_port: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Serve COMPONENTS (module:Class, each made with no arguments) until SIGTERM or SIGINT, then drain."""
    # As `python -m callrt` and uvicorn: modules in the current directory are found first. The
    # console script's sys.path[0] is its own bin directory, not the directory it was run from.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if advertise is not None and not etcd:
        _usage("--advertise is what --etcd registers: give --etcd too")
    if workers > 1:
        try:
            endpoints = [parse_endpoint(url) for url in listen]
        except ValueError as exc:
            _usage(str(exc))
        shared = [e for e in endpoints if e.scheme != "tcp" or e.port == 0]
        if shared:
            _usage(
                f"--workers {workers} shares TCP ports among processes: give each --listen a tcp:// address "
                f"with a port (not {', '.join(map(str, shared))}; a Unix socket path cannot be shared)"
            )
        flags = ["--reuse-port"] + ["--insecure"] * insecure + ["--no-reflection"] * no_reflection
        flags += [f"--etcd={etcd}"] if etcd else []
        flags += [f"--advertise={advertise}"] if advertise is not None else []
        flags += [f"--metrics-host={metrics_host}"] if metrics_port is not None else []
        args = [*components, *(f"--listen={url}" for url in listen), *flags]

        def metrics(i: int) -> list[str]:  # worker i's own port: one port serves one process
            if metrics_port is None:
                return []
            if metrics_port and metrics_port + i > 65535:
                _usage(
                    f"--metrics-port {metrics_port} with --workers {workers}: port {metrics_port + i} is out of range"
                )
            return [f"--metrics-port={metrics_port + i if metrics_port else 0}"]

        sys.exit(_supervise(workers, ["--backend", ctx.obj["backend"], "serve", *args], metrics))
    instances = [_load(name) for name in components]
    if metrics_port is not None:
        _expose_metrics(metrics_host, metrics_port)
    registrars: list[Registrar] = []
    if etcd:
        url, prefix = _etcd(etcd)
        from .resolvers.etcd import EtcdRegistrar  # needs httpx: the etcd extra

        try:
            registrars.append(EtcdRegistrar(url, prefix, advertise=advertise))
        except ValueError as exc:
            _usage(str(exc))
    options = call.ServerOptions(
        insecure=insecure, reflection=not no_reflection, reuse_port=reuse_port, registrars=registrars
    )
    run(_serve, list(listen), instances, options, backend=ctx.obj["backend"])


def _supervise(workers: int, args: list[str], extra: Callable[[int], list[str]] = lambda i: []) -> int:
    """Run ``workers`` processes of ``callrt <args> <extra(i)>``; forward SIGTERM and SIGINT to them; the worst exit code."""
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        # Their own session: a terminal's Ctrl-C reaches this process, which forwards it once.
        command = [sys.executable, "-m", "callrt", *args]
        procs.extend(
            subprocess.Popen([*command, *extra(i)], start_new_session=True, preexec_fn=_die_with_parent)
            for i in range(workers)
        )
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return next((code for code in codes if code != 0), 0)


def _die_with_parent() -> None:
    """In a worker, before exec: be killed when the supervisor dies (Linux), so no worker outlives it."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _serve(listen: list[str], instances: list[object], options: call.ServerOptions) -> None:
    async with anyio.create_task_group() as tg:
        server = await tg.start(
            lambda task_status: call.serve(listen, *instances, options=options, task_status=task_status)
        )
        click.echo(f"serving on {', '.join(map(str, server.endpoints))}", err=True)


def _expose_metrics(host: str, port: int) -> None:
    """An OpenTelemetry SDK meter provider read by Prometheus at ``http://host:port/metrics`` (a thread serves it)."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as exc:
        _usage(f"--metrics-port needs the prometheus extra (pip install 'callrt[prometheus]'): {exc}")
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        _usage(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}")
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    bound = server.server_port
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"metrics on http://{shown}:{bound}/metrics", err=True)


def _load(name: str) -> object:
    module, _, attr = name.partition(":")
    if not module or not attr:
        _usage(f"{name!r} is not module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        _usage(f"cannot load {name}: {exc}")
    return cls()


# -- plumbing ----------------------------------------------------------------------------------


def _run(ctx: click.Context, func: Callable[..., Any], url: str, *args: Any) -> Any:
    timeout: float = ctx.obj["timeout"]

    async def main() -> Any:
        with anyio.fail_after(timeout):
            resolver = _resolver(url)
            try:
                async with call.connect(resolver) as client:
                    return await func(client, *args)
            finally:
                with anyio.CancelScope(shield=True):
                    await resolver.aclose()

    try:
        return run(main, backend=ctx.obj["backend"])
    except RemoteError as exc:
        _fail(f"{exc.code.value}: {exc.message}", exc.remote_type, exc.remote_traceback)
    except CallrtError as exc:  # before TimeoutError: NoReplicaInTime is one, and says why
        _fail(f"{type(exc).__name__}: {exc}")
    except TimeoutError:
        _fail(f"no answer within {timeout} s (--timeout)")
    except ValueError as exc:  # a malformed URL
        _usage(str(exc))


def _resolver(target: str) -> Resolver:
    """``unixdir:///dir``, ``etcd://host:port/prefix/``, or endpoint URLs separated by commas."""
    if target.startswith("unixdir://"):
        return UnixDirectoryResolver(target.removeprefix("unixdir://"))
    if target.startswith("etcd://"):
        url, prefix = _etcd(target)
        from .resolvers.etcd import EtcdResolver  # needs httpx: the etcd extra

        return EtcdResolver(url, prefix)
    return ConstantResolver([u.strip() for u in target.split(",") if u.strip()])


def _etcd(target: str) -> tuple[str, str]:
    """``etcd://host:port/prefix/`` as etcd's gateway URL and the key prefix."""
    host, _, prefix = target.removeprefix("etcd://").partition("/")
    if not host or not prefix:
        _usage(f"{target!r}: an etcd target is etcd://host:port/prefix/")
    return f"http://{host}", f"/{prefix}"


def _fail(message: str, remote_type: str | None = None, remote_traceback: str | None = None) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    if remote_type:
        click.echo(f"remote type: {remote_type}", err=True)
    if remote_traceback:
        click.echo(remote_traceback.rstrip("\n"), err=True)
    sys.exit(1)


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)
