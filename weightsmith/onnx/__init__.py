"""ONNX export of every family's transformer and VAE, validated in ONNX Runtime.

``api.export_onnx`` is the entry point (the ``export onnx`` command calls it); ``trace`` turns a
component's ``ExportPlan`` (``weightsmith.families.export``) into a graph with torch's dynamo
exporter, ``validate`` compares ONNX Runtime with torch at two shapes, ``variants`` makes the
fp16 and INT8 graphs, ``runtime`` opens sessions on the provider ``--device`` names, and
``layout`` writes the pipeline folder (one subfolder per component, a JSON describing each).
"""
