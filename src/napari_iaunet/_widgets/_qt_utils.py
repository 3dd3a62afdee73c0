"""Small Qt helpers shared by the widgets: questions, file dialogs, compact layout pieces, and
:func:`on_undocked` (napari's dock "x" takes a widget out of its dock without closing it).

Every question the plugin asks goes through :func:`ask`, and every dialog can be replaced by a
plain callable (the widgets take ``ask=`` / ``get_save_path=`` / ``get_open_path=`` arguments), so
tests never block on a modal window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QFont, QFontDatabase
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

__all__ = [
    "AskFn",
    "PathFn",
    "alive",
    "ask",
    "get_open_path",
    "get_save_path",
    "hbox",
    "monospace_label",
    "on_undocked",
    "section",
    "unwrap_viewer",
]

AskFn = Callable[[str, str, Sequence[str]], str]
"""``ask(title, text, choices) -> chosen`` (the last choice is the safe one: cancel / no)."""

PathFn = Callable[[str, str, str], "str | None"]
"""``fn(caption, start, name_filter) -> path or None``."""


def unwrap_viewer(viewer: Any) -> Any:
    """The real viewer behind napari's ``PublicOnlyProxy`` (widgets keep per-viewer state keyed
    by identity, and layers reached through the proxy are proxies too)."""
    return getattr(viewer, "__wrapped__", viewer)


def alive(widget: Any) -> bool:
    """False once Qt has deleted the C++ side of a widget (its Python wrapper may live on)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def ask(title: str, text: str, choices: Sequence[str], parent: QWidget | None = None) -> str:
    """A modal question with one button per choice; Escape or closing picks the last choice."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle(title)
    box.setText(text)
    buttons = []
    for i, choice in enumerate(choices):
        role = (QMessageBox.ButtonRole.RejectRole if i == len(choices) - 1
                else QMessageBox.ButtonRole.AcceptRole)
        buttons.append(box.addButton(choice, role))
    box.setDefaultButton(buttons[0])
    box.setEscapeButton(buttons[-1])
    box.exec()
    clicked = box.clickedButton()
    for choice, button in zip(choices, buttons):
        if clicked is button:
            return choice
    return choices[-1]


def get_save_path(caption: str, start: str, name_filter: str,
                  parent: QWidget | None = None) -> str | None:
    """A save dialog that does not ask about overwriting (the caller asks, once)."""
    path, _ = QFileDialog.getSaveFileName(
        parent, caption, start, name_filter,
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    return path or None


def get_open_path(caption: str, start: str, name_filter: str,
                  parent: QWidget | None = None) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, caption, start, name_filter)
    return path or None


def section(title: str, parent: QWidget | None = None) -> tuple[QGroupBox, QVBoxLayout]:
    box = QGroupBox(title, parent)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(6, 6, 6, 6)
    layout.setSpacing(4)
    return box, layout


def hbox(*widgets: QWidget, stretch_last: bool = False) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    for w in widgets:
        layout.addWidget(w)
    if stretch_last:
        layout.addStretch(1)
    return row


def monospace_label(text: str = "") -> QLabel:
    label = QLabel(text)
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    font.setPointSizeF(max(7.0, QFont().pointSizeF() - 1))
    label.setFont(font)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class _UndockWatcher(QObject):
    """Event filter behind :func:`on_undocked` (a child of the widget it watches)."""

    def __init__(self, widget: QWidget, callback: Callable[[], Any]) -> None:
        super().__init__(widget)
        self._callback = callback
        self._docked = widget.parent() is not None
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._callback()
        return False


def on_undocked(widget: QWidget, callback: Callable[[], Any]) -> QObject:
    """Call ``callback`` whenever ``widget``, once it had a parent (its dock), loses it.

    napari's dock "x" (``Window.remove_dock_widget``) takes the inner widget out of its dock with
    ``setParent(None)`` and never sends it a close event, so ``closeEvent`` alone would let a
    running job go on unseen. Returns the watcher (owned by ``widget``).
    """
    return _UndockWatcher(widget, callback)
