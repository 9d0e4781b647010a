"""Trunks reloaded without a restart (``sipswitch reload`` / SIGHUP): a line added to the file
registers and carries calls, one removed unregisters, and the server keeps running."""

from __future__ import annotations

import asyncio

from sipswitch.trunk.manager import TrunkManager
from sipswitch.trunk.registration import RegistrationState

from .conftest import Net, eventually, rewrite
from .test_lines import CARRIER, LINE, SECRET, SERVER


async def test_a_line_added_then_removed_by_reload(net: Net) -> None:
    carrier = net.carrier(CARRIER, SERVER, "5551000", SECRET, "0611223344")
    server = await net.server("office", SERVER, "[security]\nallow = []\n", ("200", "201"))
    alice = await net.registered("200", server)
    response, _ = await alice.send_with_auth(alice.invite("90611223344"), proxy=True)
    assert response.status == 404  # no route out yet

    rewrite(server, LINE.replace("{extra}", ""))
    assert server.reload_settings()

    def manager() -> TrunkManager:
        assert isinstance(server.trunks, TrunkManager)
        return server.trunks

    def registered() -> bool:
        registration = manager().registrations.get("carrier")
        return registration is not None and registration.state is RegistrationState.REGISTERED

    await eventually(registered)
    response, _ = await alice.send_with_auth(alice.invite("90611223344"), proxy=True)
    assert response.status == 200
    assert carrier.requests("INVITE")
    # The carrier's address is trusted now: its calls come in by DID without a challenge.
    response, _ = await carrier.call("5551000")
    assert response.status == 200
    assert (await asyncio.wait_for(alice.incoming.get(), 2)).request.to.sip_uri.user == "200"

    rewrite(server, "[security]\nallow = []\n")
    assert server.reload_settings()
    await eventually(lambda: not manager().trunks)
    await eventually(lambda: not carrier.bindings)  # unregistered (Expires: 0)
    unregister = carrier.requests("REGISTER")[-1]
    assert unregister.headers.get("Expires") == "0"
    response, _ = await alice.send_with_auth(alice.invite("90611223344"), proxy=True)
    assert response.status == 404
    assert server.core is not None and server.core.accepting_calls
