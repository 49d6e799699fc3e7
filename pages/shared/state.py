"""Session-state keys: one constant per key, never bare strings in pages."""

KEY_ADAPTER = "adapter"  # the current LoraAdapter (shared read-only object from the cache)
KEY_LOAD_ERROR = "load_error"  # last loader message, shown until the next successful load
KEY_LOAD_NOTE = "load_note"  # (fingerprint, what a folder load found and where), shown while that adapter is loaded
KEY_SOURCE = "adapter_source"  # a label of sources.SOURCES
KEY_SAMPLE = "sample_choice"
KEY_RUN_CHOICE = "run_choice"  # a run in runs/ (LORA_LAB_RUNS_DIR)
KEY_FOLDER = "folder_path"
KEY_FOLDER_SEARCH = "folder_search"  # the locate.Search of a folder that holds several adapters
KEY_FOLDER_PICK = "folder_pick"  # prefix; the searched folder is appended
KEY_HUB_ID = "hub_id"  # the Hub source's ORG/NAME
KEY_HUB_DOWNLOAD = "hub_download"
KEY_UPLOAD_KIND = "upload_kind"  # "One file" | "A whole folder": one uploader at a time
KEY_UPLOAD = "upload"
KEY_UPLOAD_DIR = "upload_dir"
KEY_CUT_UNIT = "cut_unit"
KEY_CUT_VALUE = "cut_value"  # prefix; the unit is appended so each unit keeps its own slider
KEY_MIN_RANK = "min_rank"
KEY_CUT_SCOPE = "cut_scope"  # one threshold over everything (PARA) or one per component of a diffusion LoRA
KEY_EXPORT_DIR = "export_dir"
KEY_EXPORT_RESULT = "export_result"
KEY_EXPORT_ZIP = "export_zip"  # (fingerprint, ranks, format) and the download (zip or file) built for it
KEY_COMPARE_FOLDER = "compare_folder"
KEY_COMPARE_TASK = "compare_task"
KEY_COMPARE_SOURCE = "compare_source"
KEY_COMPARE_RUNS = "compare_runs"
KEY_COMPARE_SPLIT = "compare_split"
KEY_EVAL_REQUESTED = "eval_requested"  # set of EvalKeys the user asked to evaluate live (results live in the cache)
KEY_PARA_EVAL_SPLIT = "para_eval_split"
KEY_SPECTRA_TYPES = "spectra_types"
KEY_SPECTRA_LAYERS = "spectra_layers"
KEY_SPECTRA_METRIC = "spectra_metric"
KEY_PARA_TOLERANCE = "para_tolerance"  # how much worse than the uncompressed adapter the recommended cut may be
KEY_PARA_SEARCHES = "para_searches"  # {(evaluator key, tolerance, min rank): CutSearch} of this session
KEY_PARA_TABLE = "para_table"  # show the modules whose rank changed
KEY_SPECTRA_COLOR = "spectra_color"  # color the curves by module type or by layer
KEY_SPECTRA_HIGHLIGHT = "spectra_highlight"  # modules drawn on top
KEY_OWN_DATA = "own_data"  # own_data_widgets.OwnData: the base model and data file the PARA page scores cuts on
KEY_OWN_ERROR = "own_data_error"
KEY_OWN_BASE = "own_base"
KEY_OWN_FILE = "own_file"
KEY_OWN_TASK = "own_task"
KEY_OWN_SEQ_LEN = "own_seq_len"
KEY_OWN_CHUNKS = "own_chunks"
KEY_OWN_LABELS = "own_labels"
KEY_SIDE_KIND = "side_kind"  # prefix; + "-A" / "-B": where each adapter of the Side by side page comes from
KEY_SIDE_PICK = "side_pick"  # prefix; + "-A" / "-B": the sample or run picked
KEY_SIDE_FOLDER = "side_folder"  # prefix; + "-A" / "-B": the folder typed
KEY_SIDE_K = "side_k"  # singular directions compared per module
KEY_SIDE_METRIC = "side_metric"
KEY_CUT_LAST = "cut_last"  # the last cut in every unit, so a new unit starts at the same cut

# Widget values kept when the user goes to another page (Streamlit drops the state of widgets a page does not
# draw): every key starting with one of these. File uploaders cannot be kept (their values cannot be set).
KEPT_PREFIXES = (
    KEY_SOURCE, KEY_FOLDER, KEY_UPLOAD_KIND, KEY_CUT_UNIT, KEY_CUT_VALUE, KEY_MIN_RANK, KEY_EXPORT_DIR,
    KEY_COMPARE_FOLDER, KEY_COMPARE_TASK, KEY_COMPARE_SOURCE, KEY_COMPARE_RUNS, KEY_COMPARE_SPLIT, KEY_PARA_EVAL_SPLIT,
    KEY_SPECTRA_TYPES, KEY_SPECTRA_LAYERS, KEY_SPECTRA_METRIC, KEY_SPECTRA_COLOR, KEY_SPECTRA_HIGHLIGHT,
    KEY_PARA_TOLERANCE, KEY_PARA_TABLE, KEY_OWN_BASE, KEY_OWN_FILE, KEY_OWN_TASK, KEY_OWN_SEQ_LEN, KEY_OWN_CHUNKS,
    KEY_OWN_LABELS, KEY_HUB_ID,
    KEY_SIDE_KIND, KEY_SIDE_PICK, KEY_SIDE_FOLDER, KEY_SIDE_K, KEY_SIDE_METRIC,
)  # fmt: skip
