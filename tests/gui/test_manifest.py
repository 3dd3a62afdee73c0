"""The npe2 manifest is valid, and every command it names can be imported."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import napari_iaunet

MANIFEST = Path(napari_iaunet.__file__).parent / "napari.yaml"


def test_manifest_validates_and_imports():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(MANIFEST)
    assert pm.name == "napari-iaunet"
    pm.validate_imports()  # imports every python_name (what `npe2 validate --imports` does)
    ids = {c.id for c in pm.contributions.commands}
    widgets = {w.command for w in pm.contributions.widgets}
    assert "napari-iaunet.segment_widget" in widgets
    assert {r.command for r in pm.contributions.readers} <= ids
    writer = pm.contributions.writers[0]
    assert [str(t) for t in writer.layer_types] == ["labels+"]
    assert ".json" in writer.filename_extensions
    assert len(pm.contributions.sample_data) == 2


def test_installed_entry_point_points_at_this_manifest():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-iaunet"]
    if not eps:
        pytest.skip("napari-iaunet is not installed (pip install -e .)")
    module, _, resource = eps[0].value.partition(":")
    assert importlib.import_module(module) is napari_iaunet
    assert resource == "napari.yaml"


def test_npe2_cli_validate():
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", str(MANIFEST)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


@pytest.mark.parametrize("name", ["Segment cells", "Fine-tune model", "Edit cells and COCO"])
def test_widgets_open_from_the_plugin_menu(make_napari_viewer, name, no_weights_dir):
    from napari_iaunet._widgets.edit_tools import EditToolsWidget
    from napari_iaunet._widgets.finetune_widget import FineTuneWidget
    from napari_iaunet._widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-iaunet", name)
    expected = {"Segment cells": SegmentWidget, "Fine-tune model": FineTuneWidget,
                "Edit cells and COCO": EditToolsWidget}[name]
    assert isinstance(widget, expected)
    assert widget.viewer is viewer  # napari's PublicOnlyProxy is unwrapped
