"""The app's shared code, one import away: ``from normshape_app import ui; ui.X`` for every
name the pages and tests use. The code lives in files by concern (docs/contributing.md):

- ``inventory``: checkpoint folders, the cached scan (``Ckpt``), model loading, the picker
- ``uploads``: importing an uploaded checkpoint, the upload box
- ``results``: the result store, cached evaluations, progress, default settings, ``warm``
- ``urlparams``: ``URL_PARAMS`` and the query-parameter sanitizer
- ``style``: colours, safe text, page furniture, figure layout (``style``, ``show``)
- ``experiments``: the cached science calls of the pages (imported by the pages themselves)
- ``tables``, ``runs``: Compare's tables, Train's run widgets (imported by those pages)
"""
from __future__ import annotations

from normshape_app.style import (  # noqa: F401
    PN_COLOR, BN_COLOR, CLEAN_COLOR, CLASS_COLORS, REGION_COLORS, WRONG_COLOR, norm_color,
    md_escape, md_code, message_text, css_text, public_text, presenting, PRESENT_CSS,
    presentation_setup, settings_block, explain, wrap_title, style, show, metric_label,
)
from normshape_app.inventory import (  # noqa: F401
    SOURCE_ROOT, shipped_checkpoints_dir, runs_dir, uploads_dir, checkpoint_dirs, folder_label,
    dataset_here, require_dataset_here, max_active_runs, worker_threads, Ckpt, eps_text,
    norm_text,
    checkpoints, checkpoint_errors, checkpoint_by_id, with_stopped_mark, load_model,
    load_dataset, device_text,
    warm_umap_in_background, checkpoint_picker, prefer_2d_adversarial, prefer_2d_shaped,
    no_checkpoints_message, default_comparison, comparable_groups, PREFERRED_DATASETS,
    table_iv_rows, table_iv_eps,
)
from normshape_app.uploads import (  # noqa: F401
    max_upload_mb, MAX_UPLOAD_META_BYTES, Upload, import_checkpoint, upload_section,
)
from normshape_app.results import (  # noqa: F401
    USER_ERRORS, ResultStore, result_store, cached_result, Part, compute_parts, evaluation,
    stored_evaluation, evaluations_by_attack, shaped_grid_rows, INFERENCE_RATIOS,
    COMPARE_ATTACKS, SHIPPED_N, compare_settings, shipped_worst_cases, shipped_worst_n,
    compare_n, worst_case_settings, clean_accuracy_settings, grid_settings, test_set_size,
    warm, worst_case_rows, compare_worst, evaluation_job, joined,
    grid_table, grid_jobs, GRID_N, shipped_grid_worst_n, grid_n, grid_worst_settings,
)
from normshape_app.urlparams import (  # noqa: F401
    UrlParam, url_int, url_float, url_bool, url_one, url_many, URL_DATASETS, URL_DATASETS_2D,
    URL_MAX_SEED, URL_PARAMS, URL_NUMBER_LIMIT, clean_url_value, sanitize_query_params,
)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "warm":
        print("usage: python -m normshape_app.ui warm [CHECKPOINT_DIR ...]", file=sys.stderr)
        sys.exit(2)
    warm(sys.argv[2:] or None)
