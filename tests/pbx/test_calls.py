"""Calls between extensions through the B2BUA over the loop transport."""

from __future__ import annotations

import asyncio

from sipswitch.sip.headers import parse_name_addr

from .conftest import Lab
from .phone import SDP, Phone


async def _registered(lab: Lab, number: str) -> Phone:
    phone = lab.phone(number)
    assert (await phone.register()).status == 200
    return phone


async def _cdrs(lab: Lab) -> list[object]:
    assert lab.server is not None and lab.server.cdr is not None
    await lab.server.cdr.flush()
    return await lab.server.database.cdr.query()


async def test_answered_call_and_hangup_by_caller(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    response, dialog = await alice.call("201")
    assert response.status == 200
    assert response.body == SDP
    assert dialog is not None
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    # The callee sees a new dialog created by the server, not the caller's.
    assert incoming.request.call_id != response.call_id
    assert incoming.request.body == SDP
    assert parse_name_addr(incoming.request.headers.get("From") or "").sip_uri.user == "200"
    ack = await asyncio.wait_for(bob.in_dialog.get(), 2)
    assert ack.method == "ACK"
    bye = await alice.send_in_dialog(dialog, "BYE")
    assert bye.status == 200
    relayed = await asyncio.wait_for(bob.in_dialog.get(), 2)
    assert relayed.method == "BYE" and relayed.call_id == incoming.request.call_id
    (record,) = await _cdrs(lab)
    assert record.disposition == "ANSWERED"  # type: ignore[attr-defined]
    assert record.hangup_side == "caller"  # type: ignore[attr-defined]
    assert record.sip_status == 200  # type: ignore[attr-defined]


async def test_hangup_by_callee(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    response, dialog = await alice.call("201")
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    await asyncio.wait_for(bob.in_dialog.get(), 2)  # ACK
    assert incoming.dialog is not None
    bye = await bob.send_in_dialog(incoming.dialog, "BYE")
    assert bye.status == 200
    relayed = await asyncio.wait_for(alice.in_dialog.get(), 2)
    assert relayed.method == "BYE" and relayed.call_id == response.call_id
    (record,) = await _cdrs(lab)
    assert record.hangup_side == "callee"  # type: ignore[attr-defined]


async def test_busy(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    bob.answer = 486
    response, _ = await alice.call("201")
    assert response.status == 486
    (record,) = await _cdrs(lab)
    assert record.disposition == "BUSY"  # type: ignore[attr-defined]


async def test_unknown_number_and_not_registered(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    assert (await alice.call("777"))[0].status == 404
    assert (await alice.call("202"))[0].status == 480


async def test_callee_auth_demand_is_not_relayed(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    bob.answer = 407
    response, _ = await alice.call("201")
    assert response.status not in (401, 407)
    assert response.headers.get("Proxy-Authenticate") is None


async def test_caller_cancels_while_ringing(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    bob.answer = None
    task = asyncio.ensure_future(alice.call("201"))
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    # Find the caller's INVITE transaction and cancel it.
    txns = [t for t in alice.layer_client_invites() if t.request.method == "INVITE"]
    assert txns
    txns[-1].cancel()
    response, _ = await asyncio.wait_for(task, 3)
    assert response.status == 487
    for _ in range(100):
        if incoming.cancelled:
            break
        await asyncio.sleep(0.01)
    assert incoming.cancelled
    (record,) = await _cdrs(lab)
    assert record.disposition == "CANCELLED"  # type: ignore[attr-defined]


async def test_ring_timeout_gives_408(lab: Lab) -> None:
    lab.ring_timeout = 0.3
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    bob.answer = None
    response, _ = await alice.call("201")
    assert response.status == 408
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    for _ in range(100):
        if incoming.cancelled:
            break
        await asyncio.sleep(0.01)
    assert incoming.cancelled


async def test_parallel_contacts_first_answer_wins(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    desk = await _registered(lab, "201")
    soft = await _registered(lab, "201")
    desk.answer = None
    response, _ = await alice.call("201")
    assert response.status == 200
    ringing = await asyncio.wait_for(desk.incoming.get(), 2)
    await asyncio.wait_for(soft.incoming.get(), 2)
    for _ in range(100):
        if ringing.cancelled:
            break
        await asyncio.sleep(0.01)
    assert ringing.cancelled


async def test_reinvite_and_info_are_relayed(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    _, dialog = await alice.call("201")
    assert dialog is not None
    await asyncio.wait_for(bob.incoming.get(), 2)
    await asyncio.wait_for(bob.in_dialog.get(), 2)  # ACK
    hold = SDP.replace(b"a=rtpmap:0 PCMU/8000\r\n", b"a=rtpmap:0 PCMU/8000\r\na=sendonly\r\n")
    response = await alice.send_in_dialog(dialog, "INVITE", hold)
    assert response.status == 200
    relayed = await asyncio.wait_for(bob.in_dialog.get(), 2)
    assert relayed.method == "INVITE" and b"a=sendonly" in relayed.body
    alice.ack(dialog, response)
    ack = await asyncio.wait_for(bob.in_dialog.get(), 2)
    assert ack.method == "ACK" and ack.cseq.number == relayed.cseq.number
    info = await alice.send_in_dialog(dialog, "INFO")
    assert info.status == 200
    assert (await asyncio.wait_for(bob.in_dialog.get(), 2)).method == "INFO"


async def test_max_forwards_zero_gets_483(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    await _registered(lab, "201")
    request = alice.invite("201")
    request.headers.set("Max-Forwards", "0")
    response = await alice.request_with_auth(request, proxy=True)
    assert response.status == 483


async def test_unknown_dialog_gets_481(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    request = alice.invite("201")
    request.method = "BYE"
    request.headers.set("CSeq", "5 BYE")
    request.headers.set("To", "<sip:201@127.0.0.1>;tag=nope")
    request.body = b""
    request.headers.remove("Content-Type")
    response = await alice._send(request)
    assert response.status == 481
