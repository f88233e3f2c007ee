import subprocess
import sys


def test_import_grader_loads_no_framework():
    """The domain core stays pure: importing every grader module pulls in no torch, onnxruntime or fastapi."""
    code = (
        "import sys, grader, grader.measure, grader.colour, grader.defect, grader.rules, grader.flags, grader.standards, "
        "grader.pipeline, grader.records, datasets.synthetic\n"
        "bad = sorted({'torch', 'onnxruntime', 'fastapi', 'sqlalchemy', 'starlette'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
