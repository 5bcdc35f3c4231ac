"""The StatusNotifierItem and its com.canonical.dbusmenu, on the session bus,
by hand on dbus-fast's message handler (no GTK or Qt; no annotations magic).

The item owns ``org.kde.StatusNotifierItem-PID-1`` and registers that bus name
(not its unique name: hosts that restart find it again by name) with
``org.kde.StatusNotifierWatcher``, and registers again each time a watcher
appears (a bar restarting is a new watcher).

It registers once the watcher has a host, not as soon as the watcher is
there. waybar owns the watcher before its own host has registered with it,
and its host reads the items already registered only after its
registration's answer, connecting to the "item registered" signal at that
moment: an item registered in between is shown by no bar, and registering
it again does not help (the watcher ignores a known item). Seen on a fast
boot of the image (2026-12-04): the item listed, no icon drawn. The watcher
signals a first host just before answering it, so an item that waits for
that signal comes after. A host that never registers itself still gets the
item, HOST_WAIT later.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklume_desktop.tray import pixmap
from anklume_desktop.tray.view import COLOURS, REMAINING, Action, View

log = logging.getLogger(__name__)

ITEM_PATH = "/StatusNotifierItem"
# Seconds a watcher without a host is given before the item registers anyway
# (a host may show items without registering as one).
HOST_WAIT = 5.0
MENU_PATH = "/MenuBar"
ITEM_IFACE = "org.kde.StatusNotifierItem"
MENU_IFACE = "com.canonical.dbusmenu"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
WATCHER = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
HOST_REGISTERED = "StatusNotifierHostRegistered"  # the watcher's signal: a host is there
ROOT_ID = 0

_SIGNATURES = {
    ITEM_IFACE: {
        "Category": "s", "Id": "s", "Title": "s", "Status": "s", "WindowId": "i",
        "IconName": "s", "IconPixmap": "a(iiay)", "OverlayIconName": "s",
        "OverlayIconPixmap": "a(iiay)", "AttentionIconName": "s",
        "AttentionIconPixmap": "a(iiay)", "AttentionMovieName": "s",
        "ToolTip": "(sa(iiay)ss)", "ItemIsMenu": "b", "Menu": "o",
    },
    MENU_IFACE: {"Version": "u", "TextDirection": "s", "Status": "s", "IconThemePath": "as"},
}

INTROSPECTION = {
    ITEM_PATH: f"""<node><interface name="{ITEM_IFACE}">
{''.join(f'<property name="{n}" type="{t}" access="read"/>'
         for n, t in _SIGNATURES[ITEM_IFACE].items())}
<method name="Activate"><arg type="i" direction="in"/><arg type="i" direction="in"/></method>
<method name="SecondaryActivate"><arg type="i" direction="in"/><arg type="i" direction="in"/>
</method>
<method name="ContextMenu"><arg type="i" direction="in"/><arg type="i" direction="in"/></method>
<method name="Scroll"><arg type="i" direction="in"/><arg type="s" direction="in"/></method>
<signal name="NewTitle"/><signal name="NewIcon"/><signal name="NewAttentionIcon"/>
<signal name="NewOverlayIcon"/><signal name="NewToolTip"/>
<signal name="NewStatus"><arg type="s"/></signal>
</interface></node>""",
    MENU_PATH: f"""<node><interface name="{MENU_IFACE}">
{''.join(f'<property name="{n}" type="{t}" access="read"/>'
         for n, t in _SIGNATURES[MENU_IFACE].items())}
<method name="GetLayout"><arg type="i" direction="in"/><arg type="i" direction="in"/>
<arg type="as" direction="in"/><arg type="u" direction="out"/>
<arg type="(ia{{sv}}av)" direction="out"/></method>
<method name="GetGroupProperties"><arg type="ai" direction="in"/><arg type="as" direction="in"/>
<arg type="a(ia{{sv}})" direction="out"/></method>
<method name="GetProperty"><arg type="i" direction="in"/><arg type="s" direction="in"/>
<arg type="v" direction="out"/></method>
<method name="Event"><arg type="i" direction="in"/><arg type="s" direction="in"/>
<arg type="v" direction="in"/><arg type="u" direction="in"/></method>
<method name="EventGroup"><arg type="a(isvu)" direction="in"/><arg type="ai" direction="out"/>
</method>
<method name="AboutToShow"><arg type="i" direction="in"/><arg type="b" direction="out"/></method>
<method name="AboutToShowGroup"><arg type="ai" direction="in"/><arg type="ai" direction="out"/>
<arg type="ai" direction="out"/></method>
<signal name="ItemsPropertiesUpdated"><arg type="a(ia{{sv}})"/><arg type="a(ias)"/></signal>
<signal name="LayoutUpdated"><arg type="u"/><arg type="i"/></signal>
<signal name="ItemActivationRequested"><arg type="i"/><arg type="u"/></signal>
</interface></node>""",
}


class TrayItem:
    """The item as the bus sees it; ``show`` a new view, ``on_action`` gets clicks."""

    def __init__(self, bus: MessageBus, view: View,
                 on_action: Callable[[Action], None]) -> None:
        self.bus = bus
        self.view = view
        self.on_action = on_action
        self.name = f"org.kde.StatusNotifierItem-{os.getpid()}-1"
        self.revision = 1
        self.registered = False
        self.tasks: set[asyncio.Task[Any]] = set()  # kept: the loop holds tasks weakly

    # -- what is published ------------------------------------------------
    def item_props(self) -> dict[str, Any]:
        v = self.view
        drawn = pixmap.icon(COLOURS[v.look], v.done, REMAINING)
        return {
            "Category": "SystemServices", "Id": "anklume-live", "Title": v.title,
            "Status": v.status, "WindowId": 0, "IconName": v.icon_name,
            "IconPixmap": drawn, "OverlayIconName": "", "OverlayIconPixmap": [],
            "AttentionIconName": v.icon_name, "AttentionIconPixmap": drawn,
            "AttentionMovieName": "", "ToolTip": [v.icon_name, drawn, v.title, v.tooltip],
            "ItemIsMenu": False, "Menu": MENU_PATH,
        }

    def menu_props(self) -> dict[str, Any]:
        return {"Version": 3, "TextDirection": "ltr", "Status": "normal", "IconThemePath": []}

    def entry_props(self, item_id: int) -> dict[str, Variant] | None:
        if item_id == ROOT_ID:
            return {"children-display": Variant("s", "submenu")}
        if not 1 <= item_id <= len(self.view.menu):
            return None
        entry = self.view.menu[item_id - 1]
        return {"label": Variant("s", entry.label), "enabled": Variant("b", entry.enabled),
                "visible": Variant("b", True)}

    def layout(self) -> list[Any]:
        children = [Variant("(ia{sv}av)", [i, self.entry_props(i), []])
                    for i in range(1, len(self.view.menu) + 1)]
        return [ROOT_ID, self.entry_props(ROOT_ID), children]

    # -- the bus ------------------------------------------------------------
    async def start(self) -> None:
        self.bus.add_message_handler(self.handle)
        await self.bus.request_name(self.name)
        for rule in (f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
                     f"arg0='{WATCHER}'",
                     f"type='signal',interface='{WATCHER}',member='{HOST_REGISTERED}'"):
            await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "AddMatch", "s", [rule])
        self._soon(self.watcher_appeared())  # the notifications need not wait for a host

    async def watcher_appeared(self) -> None:
        """Register now if the watcher has a host; else when one registers
        (its signal, handled in ``handle``), or HOST_WAIT later at the latest."""
        self.registered = False
        if await self._has_host():
            await self.register()
            return
        log.info("tray: the watcher has no host yet; registering when one comes")
        await asyncio.sleep(HOST_WAIT)
        if not self.registered:
            await self.register()

    async def _has_host(self) -> bool:
        reply = await self._call(WATCHER, WATCHER_PATH, PROPS_IFACE, "Get", "ss",
                                 [WATCHER, "IsStatusNotifierHostRegistered"])
        if reply.message_type != MessageType.METHOD_RETURN:
            # No watcher (register() says so), or one without the property.
            return True
        return bool(reply.body[0].value)

    async def register(self) -> bool:
        reply = await self._call(WATCHER, WATCHER_PATH, WATCHER, "RegisterStatusNotifierItem",
                                 "s", [self.name])
        self.registered = reply.message_type == MessageType.METHOD_RETURN
        log.info("tray: %s", "registered with the watcher" if self.registered
                 else "no watcher yet; notifications only until one appears")
        return self.registered

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str,
                    body: list[Any]) -> Message:
        reply = await asyncio.wait_for(self.bus.call(Message(
            destination=dest, path=path, interface=iface, member=member, signature=sig,
            body=body)), 10)
        assert reply is not None
        return reply

    def show(self, view: View) -> None:
        old, self.view = self.view, view
        if old == view:
            return
        for signal, args in (("NewIcon", []), ("NewAttentionIcon", []), ("NewToolTip", []),
                             ("NewTitle", []), ("NewStatus", [view.status])):
            self.bus.send(Message.new_signal(ITEM_PATH, ITEM_IFACE, signal,
                                             "s" if args else "", args))
        if old.menu != view.menu:
            self.revision += 1
            self.bus.send(Message.new_signal(MENU_PATH, MENU_IFACE, "LayoutUpdated", "ui",
                                             [self.revision, ROOT_ID]))

    def handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.body[0] == WATCHER and msg.body[2]:
                self._soon(self.watcher_appeared())
            elif msg.member == HOST_REGISTERED and msg.interface == WATCHER \
                    and not self.registered:
                self._soon(self.register())
            return None
        if msg.message_type != MessageType.METHOD_CALL or msg.path not in INTROSPECTION:
            return None
        try:
            return self._dispatch(msg)
        except (IndexError, TypeError, ValueError, KeyError):
            return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                     "bad arguments")

    def _soon(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        """A watcher that does not answer is said in one line, not a traceback
        (the next watcher to appear is tried again)."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("tray: the watcher did not answer (%s)",
                     type(task.exception()).__name__)

    def _dispatch(self, msg: Message) -> Message:
        iface, member, body = msg.interface, msg.member, msg.body
        if iface == INTROSPECT_IFACE and member == "Introspect":
            return Message.new_method_return(msg, "s", [INTROSPECTION[msg.path or ""]])
        own = ITEM_IFACE if msg.path == ITEM_PATH else MENU_IFACE
        if iface == PROPS_IFACE:
            return self._properties(msg, own)
        if iface == ITEM_IFACE and own == ITEM_IFACE:
            if member == "Activate":
                self.on_action(Action.GUIDE)
            return Message.new_method_return(msg)
        if iface == MENU_IFACE and own == MENU_IFACE:
            return self._menu(msg, member or "", body)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                 f"{iface}.{member} is not a method here")

    def _properties(self, msg: Message, own: str) -> Message:
        props = self.item_props() if own == ITEM_IFACE else self.menu_props()
        types = _SIGNATURES[own]
        if msg.member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [
                {k: Variant(types[k], v) for k, v in props.items()}
                if msg.body[0] in (own, "") else {}])
        if msg.member == "Get" and msg.body[0] == own and msg.body[1] in props:
            name = msg.body[1]
            return Message.new_method_return(msg, "v", [Variant(types[name], props[name])])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                 "no such property, or it is read-only")

    def _menu(self, msg: Message, member: str, body: list[Any]) -> Message:
        if member == "GetLayout":
            return Message.new_method_return(msg, "u(ia{sv}av)", [self.revision, self.layout()])
        if member == "GetGroupProperties":
            ids = body[0] or list(range(len(self.view.menu) + 1))
            found = [[i, p] for i in ids if (p := self.entry_props(i)) is not None]
            return Message.new_method_return(msg, "a(ia{sv})", [found])
        if member == "GetProperty":
            props = self.entry_props(body[0]) or {}
            if body[1] not in props:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs",
                                         "no such menu item property")
            return Message.new_method_return(msg, "v", [props[body[1]]])
        if member == "Event":
            self._clicked(body[0], body[1])
            return Message.new_method_return(msg)
        if member == "EventGroup":
            errors = [e[0] for e in body[0] if self.entry_props(e[0]) is None]
            for item_id, event, _data, _time in body[0]:
                self._clicked(item_id, event)
            return Message.new_method_return(msg, "ai", [errors])
        if member == "AboutToShow":
            return Message.new_method_return(msg, "b", [False])
        if member == "AboutToShowGroup":
            return Message.new_method_return(msg, "aiai", [[], []])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                 f"{member} is not a dbusmenu method")

    def _clicked(self, item_id: int, event: str) -> None:
        if event == "clicked" and 1 <= item_id <= len(self.view.menu):
            entry = self.view.menu[item_id - 1]
            if entry.enabled:
                self.on_action(entry.action)
