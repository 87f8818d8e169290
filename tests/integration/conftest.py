import pytest

from quantkit.cache import cache_dir
from quantkit.sources import gemma3_270m_path

from .llamacpp import write_f32_base


@pytest.fixture(scope="session")
def q4km_270m():
    return gemma3_270m_path()


@pytest.fixture(scope="session")
def f32_270m(q4km_270m):
    return write_f32_base(q4km_270m, cache_dir("models") / "gemma-3-270m-f32.gguf")
