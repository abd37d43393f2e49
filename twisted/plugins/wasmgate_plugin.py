# -*- test-case-name: tests.test_cli -*-
"""
twistd plugin: C{twistd wasmgate -c gateway.yaml}.

Kept thin: everything lives in the wasmgate package.
"""
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", "gateway.yaml", "The gateway's YAML config file."],
    ]

    def opt_version(self) -> None:
        """Print wasmgate's version and those of wasmtime, Twisted and Python, then exit."""
        from wasmgate._version import version_report

        print(version_report())
        sys.exit(0)


@implementer(IServiceMaker, IPlugin)
class WasmgateServiceMaker:
    tapname = "wasmgate"
    description = "TLS-terminating edge gateway with WebAssembly filters."
    options = Options

    def makeService(self, options):
        from wasmgate.twistd import make_twistd_service, use_gateway_reactor

        use_gateway_reactor()  # unless twistd -r chose one
        return make_twistd_service(options["config"])


serviceMaker = WasmgateServiceMaker()
