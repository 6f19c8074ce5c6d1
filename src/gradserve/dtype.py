"""``from gradserve import dtype as mstype``: MindSpore's dtype names and aliases."""
from gradserve.client.dtype import (  # noqa: F401
    DType, bool_, byte, double, dtype_to_nptype, float16, float32, float64, half, int8, int16, int32, int64, intc,
    intp, pytype_to_dtype, short, single, ubyte, uint8,
)
