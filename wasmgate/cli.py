# -*- test-case-name: tests.test_cli -*-
"""
The C{wasmgate} command: C{check} a config, C{plugin inspect} a module,
run a C{demo-upstream}.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from wasmgate.config import ConfigError, load_config


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
    print(
        f"{args.config}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams,"
        f" {len(config.plugins)} plugins)"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from wasmgate.wasm.engine import WasmEngine
    from wasmgate.wasm.inspect import inspect_module

    engine = WasmEngine()
    try:
        report = inspect_module(args.file, engine)
    finally:
        engine.stop()
    print(report.text())
    return 0 if report.ok else 1


def _demo_upstream(args: argparse.Namespace) -> int:
    from wasmgate.demo import run_demo_upstream

    run_demo_upstream(port=args.port, interface=args.interface)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmgate", description="WebAssembly edge gateway tools")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate a config file and its plugins")
    check.add_argument("-c", "--config", default="gateway.yaml")
    check.set_defaults(run=_check)

    plugin = commands.add_parser("plugin", help="plugin tools")
    plugin_commands = plugin.add_subparsers(dest="plugin_command", required=True)
    inspect = plugin_commands.add_parser("inspect", help="show a .wasm module's ABI, imports, exports")
    inspect.add_argument("file")
    inspect.set_defaults(run=_inspect)

    demo = commands.add_parser("demo-upstream", help="run an echo server to proxy to")
    demo.add_argument("--port", type=int, default=9000)
    demo.add_argument("--interface", default="127.0.0.1")
    demo.set_defaults(run=_demo_upstream)

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
