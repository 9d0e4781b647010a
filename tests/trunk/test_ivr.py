"""A DID of an external line bound to an IVR menu: the caller from the carrier is joined to an
extension it dials, but a number that would leave through a trunk is refused (toll fraud)."""

from __future__ import annotations

import asyncio

from sipswitch.app import IvrApplication
from sipswitch.config.settings import Settings
from sipswitch.pbx.application import Application
from sipswitch.sip.transport.base import Address

from .conftest import Carrier, Net, eventually

SERVER = Address("udp", "127.0.0.1", 5060)
CARRIER = Address("udp", "127.0.0.9", 5060)

CONFIG = """
[ivr.numbers]
"801" = "menu.xml"

[[trunks]]
name = "carrier"
kind = "line"
host = "127.0.0.9"
username = "5551000"
password = "line-secret"
dids = { "5551000" = "801" }
options_interval = 0

[[dialplan]]
prefix = "9"
strip = 1
target = "trunk:carrier"
"""

MENU = """<?xml version="1.0" encoding="utf-8"?>
<mssxml version="1">
  <action name="menu" method="getdtmf">
    <voice>welcome</voice>
    <maxdigits>3</maxdigits>
    <timeout>5</timeout>
    <retries>0</retries>
    <match-digits>
      <match pattern="XXX" nextaction="dial"/>
    </match-digits>
  </action>
  <action name="dial" method="callto">
    <destination>${dtmf}</destination>
  </action>
</mssxml>
"""


async def _menu_call(net: Net) -> tuple[Carrier, object]:
    started: list[IvrApplication] = []

    def applications(settings: Settings) -> dict[str, Application]:
        folder = settings.ivr_xml_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "menu.xml").write_text(MENU)
        ivr = IvrApplication(settings)
        ivr.start()
        started.append(ivr)
        return {"ivr": ivr}

    carrier = net.carrier(CARRIER, SERVER, "5551000", "line-secret", "0611223344")
    server = await net.server("office", SERVER, CONFIG, ("200",), applications)
    net.cleanups.extend(ivr.stop for ivr in started)
    manager = server.trunks
    await eventually(lambda: manager is not None and manager.destination("carrier") is not None)
    response, dialog = await carrier.call("5551000")
    assert response.status == 200 and dialog is not None
    return carrier, dialog


async def _dial(carrier: Carrier, dialog: object, digits: str) -> None:
    for digit in digits:
        info = await carrier.send_in_dialog(
            dialog,  # type: ignore[arg-type]
            "INFO",
            f"Signal={digit}\r\nDuration=160\r\n".encode(),
            content_type="application/dtmf-relay",
        )
        assert info.status == 200


async def _next(carrier: Carrier, method: str) -> None:
    while (await asyncio.wait_for(carrier.in_dialog.get(), 5)).method != method:
        pass


async def test_the_menu_joins_the_carrier_caller_to_an_extension(net: Net) -> None:
    carrier, dialog = await _menu_call(net)
    bob = await net.registered("200", net.servers[0])
    await _dial(carrier, dialog, "200")
    ring = await asyncio.wait_for(bob.incoming.get(), 5)
    assert ring.request.from_.sip_uri.user == "0611223344"
    await _next(carrier, "INVITE")  # the re-INVITE with 200's media: joined


async def test_the_menu_cannot_dial_out_through_the_line(net: Net) -> None:
    carrier, dialog = await _menu_call(net)
    await _dial(carrier, dialog, "930")
    await _next(carrier, "BYE")  # the callto was refused; the flow ended
    assert carrier.requests("INVITE") == []


async def test_a_menu_number_that_does_not_exist_ends_the_call(net: Net) -> None:
    carrier, dialog = await _menu_call(net)
    await _dial(carrier, dialog, "299")
    await _next(carrier, "BYE")
