"""Input substrates: the frozen (or trainable) input layer. `tables` holds the
recipe (`SubstrateArgs`), the table builder and the `Substrate` module; `codes`
the n-bit codes and PCA; `glyph` the rendered-glyph recipe; `files` table files."""

from mlx_grow.substrate.codes import id_bits, padded_width, pca_l2
from mlx_grow.substrate.files import load_table_file
from mlx_grow.substrate.tables import (
    KINDS,
    Substrate,
    SubstrateArgs,
    build_table,
    describe_file,
    fingerprint,
    save_table,
)

__all__ = ["KINDS", "Substrate", "SubstrateArgs", "build_table", "fingerprint", "id_bits", "pca_l2",
           "padded_width", "describe_file", "load_table_file", "save_table"]
