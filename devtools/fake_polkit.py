"""FAKE polkit authority for the service test tier (the VM tier runs polkitd).

Owns org.freedesktop.PolicyKit1 on a private bus and answers CheckAuthorization
from a mode file the tests write: ``allow``, ``deny``, ``challenge`` (needs a
password: authorized only when the caller allowed interaction, as if the person
typed it), ``absent`` (replies with ServiceUnknown-like errors) or ``hang``
(never answers: a check still under way when something else happens). Every
call is appended to a JSON-lines log so tests can see what was asked.
"""



import argparse
import asyncio
import json
from pathlib import Path

from dbus_fast import DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

# A burst of checks fills its socket: without the writer fix the bus connection drops.
from anklumed.service import dbus_fixes  # noqa: F401


class FakeAuthority(ServiceInterface):
    def __init__(self, mode_file: Path, log_file: Path) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.mode_file = mode_file
        self.log_file = log_file

    @method()
    async def CheckAuthorization(
        self, subject: "(sa{sv})", action_id: "s", details: "a{ss}", flags: "u",
        cancellation_id: "s",
    ) -> "(bba{ss})":
        mode = self.mode_file.read_text().strip() if self.mode_file.exists() else "deny"
        kind, props = subject
        name = props["name"].value if isinstance(props.get("name"), Variant) else ""
        with self.log_file.open("a") as f:
            f.write(json.dumps({"subject": kind, "name": name, "action": action_id,
                                "flags": flags}) + "\n")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "absent":
            raise DBusError("org.freedesktop.DBus.Error.ServiceUnknown", "polkit is gone")
        if mode == "allow":
            return [True, False, {}]
        if mode == "challenge":
            return [bool(flags & 1), not (flags & 1), {}]
        return [False, False, {}]

    @method()
    def CancelCheckAuthorization(self, cancellation_id: "s"):  # type: ignore[no-untyped-def]
        return None

    # anklumectl starts pkttyagent when run at a terminal; it registers here.
    # Accepted and ignored: "challenge" stands for the password it would ask.
    @method()
    def RegisterAuthenticationAgentWithOptions(  # type: ignore[no-untyped-def]
            self, subject: "(sa{sv})", locale: "s", object_path: "s", options: "a{sv}"):
        return None

    @method()
    def RegisterAuthenticationAgent(  # type: ignore[no-untyped-def]
            self, subject: "(sa{sv})", locale: "s", object_path: "s"):
        return None

    @method()
    def UnregisterAuthenticationAgent(  # type: ignore[no-untyped-def]
            self, subject: "(sa{sv})", object_path: "s"):
        return None


async def serve(address: str, mode_file: Path, log_file: Path) -> None:
    bus = await MessageBus(bus_address=address).connect()
    bus.export("/org/freedesktop/PolicyKit1/Authority", FakeAuthority(mode_file, log_file))
    await bus.request_name("org.freedesktop.PolicyKit1")
    print("ready", flush=True)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", required=True)
    parser.add_argument("--mode-file", type=Path, required=True)
    parser.add_argument("--log-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.bus, args.mode_file, args.log_file))


if __name__ == "__main__":
    main()
