# -*- test-case-name: tests.test_cli -*-
"""
The C{wasmgate} command: C{check} a config, C{plugin inspect} a module,
start a filter project with C{plugin new}, run a C{demo-upstream}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

from wasmgate.config import ConfigError, GatewayConfig, load_config


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        from wasmgate.checks import deep_check

        report = deep_check(config)
    except ConfigError as e:
        print(f"{args.config}: invalid\n{e}", file=sys.stderr)
        return 1
    if report.problems:
        print(f"{args.config}: invalid", file=sys.stderr)
        for problem in report.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
    for warning in report.warnings:
        print(f"{args.config}: {warning}", file=sys.stderr)
    if report.problems:
        return 1
    bound = ""
    if args.bind:  # only for a config that could start: a busy port is no config error
        from wasmgate._listen import bind_targets

        refused = _bind_problems(config)
        for line in refused:
            print(f"{args.config}: {line}", file=sys.stderr)
        if refused:
            return 1
        bound = f"; listened on {len(bind_targets(config))} addresses and let go"
    print(
        f"{args.config}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams,"
        f" {len(config.plugins)} plugins{bound})"
    )
    print(f"{args.config}: {_processes(config)}")
    return 0


def _processes(config: GatewayConfig) -> str:
    """What C{twistd wasmgate} will run for this config, in one line."""
    threads = config.filters.threads
    count = config.server.worker_count()
    how = " (auto: one per CPU here)" if config.server.workers == 0 else ""
    if count <= 1:
        return f"runs 1 process{how} with {threads} filter threads"
    shared = {
        "memory": "filter counters shared by the workers in memory",
        "redis": "filter counters in Redis",
    }.get(config.state.backend, "")
    return (
        f"runs a supervisor and {count} worker processes{how}, each with {threads} filter threads"
        f" ({count * threads} in all; filters.threads is per worker); {shared}"
    )


def _bind_problems(config: GatewayConfig) -> list[str]:
    """Listen on every listener once and let go (C{check --bind}): those that cannot."""
    from twisted.internet import reactor

    from wasmgate._listen import bind_problems

    problems: list[str] = []

    def bind() -> None:
        d = bind_problems(config, reactor=reactor)
        d.addCallback(problems.extend)
        d.addErrback(lambda failure: problems.append(f"listeners: {failure.getErrorMessage()}"))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(bind)
    reactor.run(installSignalHandlers=False)
    return problems


class _UsageError(Exception):
    """A bad option value: printed, exit status 2 (as argparse does)."""


def _given_plugin_config(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """The plugin config from C{--plugin-config}/C{--plugin-config-json}, if any."""
    if args.plugin_config_json is not None:
        try:
            value = json.loads(args.plugin_config_json)
        except ValueError as e:
            raise _UsageError(f"--plugin-config-json: not JSON: {e}")
        return _mapping("--plugin-config-json", value)
    if args.plugin_config is not None:
        option = "--plugin-config " + args.plugin_config
        try:
            with open(args.plugin_config, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise _UsageError(f"{option}: cannot read it: {e.strerror or e}")
        import yaml  # a superset of JSON: one parser for both files

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise _UsageError(f"{option}: not JSON or YAML: {' '.join(str(e).split())}")
        return _mapping(option, {} if value is None else value)
    return None


def _mapping(option: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _UsageError(f"{option}: expected a mapping, got {type(value).__name__}")
    return value


def _inspect(args: argparse.Namespace) -> int:
    from wasmgate.wasm.engine import WasmEngine
    from wasmgate.wasm.inspect import inspect_module

    try:
        given = _given_plugin_config(args)
    except _UsageError as e:
        print(f"wasmgate plugin inspect: {e}", file=sys.stderr)
        return 2
    source: Any = args.plugin
    options: dict[str, Any] = {"config": given or {}, "config_known": given is not None}
    if args.config is not None:
        from wasmgate.sources import PluginSource
        from wasmgate.wasm.filter import PluginLoadError

        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(f"{args.config}: invalid\n{e}", file=sys.stderr)
            return 1
        try:
            plugin = config.plugin(args.plugin)
        except KeyError:
            names = ", ".join(p.name for p in config.plugins) or "none"
            print(f"{args.config}: no plugin named {args.plugin!r} (plugins: {names})", file=sys.stderr)
            return 1
        cache = config.filters.cache_dir
        fetcher = PluginSource(reactor=None, cache_dir=os.path.join(cache, "plugins") if cache else None)
        try:
            source = fetcher.fetch_sync(plugin)
        except PluginLoadError as e:
            print(f"{args.config}: plugin {plugin.name}: {e.what}", file=sys.stderr)
            return 1
        options = {
            "config": given if given is not None else dict(plugin.config),
            "config_known": True,
            "memory_limit_mb": plugin.memory_limit_mb,
            "name": f"plugin {plugin.name}: {plugin.path}",
            "export": plugin.export,
            # config_raw/config_base64, unless --plugin-config* replaces them
            "config_bytes": plugin.config_bytes if given is None else None,
        }
    if args.export is not None:
        options["export"] = args.export
    engine = WasmEngine()
    try:
        report = inspect_module(source, engine, **options)
    finally:
        engine.stop()
    print(report.text())
    return 0 if report.ok else 1


def _new_plugin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wasmgate.scaffold import ScaffoldError, write_project

    directory = Path(args.dir if args.dir is not None else args.name)
    try:
        project = write_project(args.name, directory=directory, sdk=args.sdk)
    except ScaffoldError as e:
        print(f"wasmgate plugin new: {e}", file=sys.stderr)
        return 1
    print(f"wrote filter project {args.name} in {directory}/ (wasmgate-sdk: {project.sdk}):")
    for path in project.files:
        print(f"  {path}")
    print(f"next: cd {directory} && npm install && npm run build && python -m pytest")
    return 0


def _demo_upstream(args: argparse.Namespace) -> int:
    from wasmgate.demo import run_demo_upstream

    run_demo_upstream(port=args.port, interface=args.interface)
    return 0


class _VersionAction(argparse.Action):
    """C{--version}: computed only when asked for (it reads package metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from wasmgate._version import version_report

        print(version_report())
        parser.exit()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmgate", description="WebAssembly edge gateway tools")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the versions of wasmgate, wasmtime, Twisted, httptools and Python, and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate a config file and its plugins")
    check.add_argument("-c", "--config", default="gateway.yaml")
    check.add_argument(
        "--bind",
        action="store_true",
        help="also listen on every server.listen and admin.listen address once, and let go"
        " (fails if one is in use)",
    )
    check.set_defaults(run=_check)

    plugin = commands.add_parser("plugin", help="plugin tools")
    plugin_commands = plugin.add_subparsers(dest="plugin_command", required=True)
    inspect = plugin_commands.add_parser(
        "inspect",
        help="show a .wasm module's ABI, imports, exports and whether it loads",
        description="Show a .wasm module's ABI, imports and exports, and load it once"
        " (running its wasmgate_init with the plugin config) to see whether the gateway could.",
    )
    inspect.add_argument(
        "plugin", metavar="FILE|NAME", help="a .wasm file, or with -c the name of a configured plugin"
    )
    inspect.add_argument(
        "-c",
        "--config",
        metavar="GATEWAY_YAML",
        help="inspect plugin NAME of this gateway config, with its config and memory limit",
    )
    given = inspect.add_mutually_exclusive_group()
    given.add_argument(
        "--plugin-config", metavar="FILE", help="the plugin's config, a JSON or YAML file"
    )
    given.add_argument(
        "--plugin-config-json", metavar="JSON", help="the plugin's config inline, e.g. '{\"limit\": 10}'"
    )
    inspect.add_argument(
        "--export",
        metavar="NAME",
        help="the function an Extism plugin's calls go to (default: handler, or with -c the plugin's export:)",
    )
    inspect.set_defaults(run=_inspect)

    new = plugin_commands.add_parser(
        "new",
        help="write a filter project (AssemblyScript on the SDK) that builds and passes its test",
        description="Write a ready-to-build filter project: assembly/index.ts on the wasmgate SDK,"
        " package.json, the build settings and a pytest file using wasmgate.testing."
        " Then: cd NAME && npm install && npm run build && python -m pytest",
    )
    new.add_argument("name", metavar="NAME", help="the filter's name (also its directory and .wasm file)")
    new.add_argument("--dir", metavar="DIR", help="where to write it (default: ./NAME)")
    new.add_argument(
        "--sdk",
        metavar="PATH|SPEC",
        help="the SDK: the path of plugins/sdk, or any npm spec for it (a tarball, a URL);"
        " default: plugins/sdk of the checkout wasmgate runs from",
    )
    new.set_defaults(run=_new_plugin)

    demo = commands.add_parser("demo-upstream", help="run an echo server to proxy to")
    demo.add_argument("--port", type=int, default=9000)
    demo.add_argument("--interface", default="127.0.0.1")
    demo.set_defaults(run=_demo_upstream)

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
