"""Registrar behaviour over the loop transport: digest auth, bindings, bounds, persistence."""

from __future__ import annotations

from sipswitch.sip.headers import parse_name_addr

from .conftest import PASSWORD, Lab


async def test_register_challenges_then_accepts(lab: Lab) -> None:
    await lab.start_server()
    phone = lab.phone("200")
    response = await phone.register(expires=600)
    assert response.status == 200
    contacts = response.headers.values("Contact")
    assert len(contacts) == 1
    contact = parse_name_addr(contacts[0])
    assert str(contact.uri) == f"sip:200@127.0.0.2:{phone.address.port}"
    assert 590 <= int(contact.params["expires"] or 0) <= 600
    assert response.to.tag


async def test_wrong_password_and_unknown_user_get_the_same_answer(lab: Lab) -> None:
    await lab.start_server()
    wrong = await lab.phone("200", password="not-it").register()
    unknown = await lab.phone("999", password="whatever").register()
    assert wrong.status == unknown.status == 401
    assert wrong.reason == unknown.reason
    assert [h for h, _ in wrong.headers] == [h for h, _ in unknown.headers]


async def test_expires_too_brief_gets_423(lab: Lab) -> None:
    await lab.start_server()
    response = await lab.phone("200").register(expires=10)
    assert response.status == 423
    assert response.headers.get("Min-Expires") == "60"


async def test_unregister_and_fetch(lab: Lab) -> None:
    server = await lab.start_server()
    phone = lab.phone("200")
    assert (await phone.register()).status == 200
    assert server.location is not None and len(server.location.lookup("200")) == 1
    response = await phone.register(expires=0)
    assert response.status == 200
    assert response.headers.values("Contact") == []
    assert server.location.lookup("200") == []


async def test_wildcard_unregisters_everything(lab: Lab) -> None:
    server = await lab.start_server()
    phone = lab.phone("200")
    await phone.register()
    await phone.register(contact="<sip:200@127.0.0.9:5999>")
    assert server.location is not None and len(server.location.lookup("200")) == 2
    response = await phone.register(expires=0, contact="*")
    assert response.status == 200
    assert server.location.lookup("200") == []


async def test_contact_limit_keeps_the_newest(lab: Lab) -> None:
    server = await lab.start_server()
    phone = lab.phone("200")
    for port in range(6001, 6005):
        response = await phone.register(contact=f"<sip:200@127.0.0.9:{port}>")
        assert response.status == 200
    assert server.location is not None
    uris = sorted(b.contact_uri for b in server.location.lookup("200"))
    assert uris == [f"sip:200@127.0.0.9:{p}" for p in (6002, 6003, 6004)]


async def test_contact_params_stay_outside_the_uri(lab: Lab) -> None:
    await lab.start_server()
    phone = lab.phone("200")
    response = await phone.register(contact="<sip:200@127.0.0.9:6000;transport=udp>;unknownparam")
    assert response.status == 200
    contact = parse_name_addr(response.headers.values("Contact")[0])
    assert "unknownparam" in contact.params
    assert "unknownparam" not in str(contact.uri)
    assert contact.sip_uri.params == {"transport": "udp"}


async def test_bindings_survive_a_restart(lab: Lab) -> None:
    await lab.start_server()
    phone = lab.phone("200")
    assert (await phone.register()).status == 200
    await lab.stop_server()
    server = await lab.start_server()
    assert server.location is not None
    bindings = server.location.lookup("200")
    assert [b.contact_uri for b in bindings] == [f"sip:200@127.0.0.2:{phone.address.port}"]
    assert "1 registrations restored" in lab.output[-1]


async def test_a_failing_store_gets_500_and_the_server_keeps_serving(lab: Lab) -> None:
    server = await lab.start_server()
    phone = lab.phone("200")
    assert (await phone.register()).status == 200
    assert server.location is not None and server.location._store is not None
    store = server.location._store
    original = store.apply

    async def broken(*args: object) -> None:
        raise RuntimeError("database is gone")

    store.apply = broken  # type: ignore[method-assign]
    try:
        assert (await phone.register()).status == 500
    finally:
        store.apply = original  # type: ignore[method-assign]
    assert (await phone.register()).status == 200


async def test_extensions_added_while_running_are_seen(lab: Lab) -> None:
    server = await lab.start_server(extensions=())
    phone = lab.phone("300")
    assert (await phone.register()).status == 401
    await server.database.extensions.add("300", PASSWORD, "sipswitch")
    assert server.directory is not None
    await server.directory.load()
    assert (await phone.register()).status == 200
    await server.database.extensions.remove("300")
    await server.directory.load()
    assert (await phone.register()).status == 401


async def test_refreshing_one_device_writes_one_binding(lab: Lab) -> None:
    """An extension with many devices: a refresh writes only the binding that changed."""
    lab.extra_config = "[registrar]\nmax_contacts = 50\n"
    server = await lab.start_server()
    phone = lab.phone("200")
    for port in range(6000, 6020):
        assert (await phone.register(contact=f"<sip:200@127.0.0.9:{port}>")).status == 200
    assert server.location is not None and server.location._store is not None
    store = server.location._store
    writes: list[tuple[int, int]] = []
    original = store.apply

    async def recording(upserts: list[object], deletes: list[object]) -> None:
        writes.append((len(upserts), len(deletes)))
        await original(upserts, deletes)  # type: ignore[arg-type]

    store.apply = recording  # type: ignore[method-assign, assignment]
    try:
        assert (await phone.register(contact="<sip:200@127.0.0.9:6005>")).status == 200
    finally:
        store.apply = original  # type: ignore[method-assign]
    assert writes == [(1, 0)]
    assert len(server.location.lookup("200")) == 20
