# Shared by the config scripts: the DAC-DETR recipe flags (two-stage Deformable DETR with box refinement,
# mixed query selection, look-forward-twice, dropout 0, FFN 2048, 900 queries). Usage, from a config:
#   . "$(dirname "$0")/_recipe.sh"; dacdetr_run <output_dir> <config flags...> -- "$@"
dacdetr_run() {
    local out=$1; shift
    local cfg=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do cfg+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    set -x
    ${PYTHON:-python3} -u -m dacdetr.main \
        --output_dir "$out" \
        --with_box_refine \
        --two_stage \
        --dim_feedforward 2048 \
        --num_queries_one2one 900 \
        --dropout 0.0 \
        --mixed_selection \
        --look_forward_twice \
        "${cfg[@]}" "$@"
}
