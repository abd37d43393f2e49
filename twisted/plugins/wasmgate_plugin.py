"""
twistd plugin: C{twistd wasmgate -c gateway.yaml}.

Kept thin: everything lives in the wasmgate package.
"""
from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", "gateway.yaml", "The gateway's YAML config file."],
    ]


@implementer(IServiceMaker, IPlugin)
class WasmgateServiceMaker:
    tapname = "wasmgate"
    description = "TLS-terminating edge gateway with WebAssembly filters."
    options = Options

    def makeService(self, options):
        from wasmgate.twistd import make_twistd_service

        return make_twistd_service(options["config"])


serviceMaker = WasmgateServiceMaker()
