"""Audio for speech enhancement: SGMSE+'s spectral features (``features``), files and resampling (``io``),
and long files streamed through cross-faded windows in bounded memory (``stream``)."""
from .features import (EARS_48K, SGMSE_16K, SpecConfig, compress, decompress, from_spec, istft, norm_factor,
                       normalize, pad_frames, stft, to_spec)
from .io import AudioError, AudioInfo, peak_safe, probe_audio, read_audio, resample, write_audio
from .stream import ArraySource, FileSource, collect, process_stream, write_peak_safe

__all__ = ["SpecConfig", "SGMSE_16K", "EARS_48K", "stft", "istft", "compress", "decompress", "to_spec",
           "from_spec", "pad_frames", "norm_factor", "normalize",
           "AudioError", "AudioInfo", "probe_audio", "read_audio", "write_audio", "resample", "peak_safe",
           "ArraySource", "FileSource", "process_stream", "collect", "write_peak_safe"]
