"""Where the CUDA C kernels live and how they are compiled.

The one description of ``kernels/*.cu`` that both the CUDA backend (its
family modules, through ``cupy.RawModule``) and the compile checks
(``tests/test_kernels_compile.py``, ``.ci/nvcc_check.sh``) read, so what is
tested is what runs. Importable without CuPy (``fastmlp.backend.cuda``
imports its ops only where CuPy is), and standalone (no package imports), so
CI can run it by path.

A family is one ``.cu`` file; the ``.cuh`` headers it includes hold what
several families share. Its name expressions are the C++ template
instantiations NVRTC is asked to emit (``bias_act_forward<float>``); the
backend retrieves each kernel by exactly that string.
"""
import os
import re
import sys

# NVRTC options for every family (CuPy adds the -arch of the device it runs on).
OPTIONS = ("--std=c++14",)
# and for some families more: the optimizer steps compute operation for operation as
# their CPU twins, with no multiply-add contracted into an fma (kernels/optim.cu)
FAMILY_OPTIONS = {"optim": ("--fmad=false",)}

FLOAT_TYPES = ("float", "double")          # T: float32, float64
INDEX_TYPES = ("int", "long long")         # labels, idx, bad counters: int32, int64
# gather_rows moves bits: float/double by name, any other dtype by its width
GATHER_TYPES = ("float", "double", "unsigned char", "unsigned short",
                "unsigned int", "unsigned long long")


def expr(kernel, *types):
    """The name expression of one instantiation: expr("mse", "float") == "mse<float>"."""
    return f"{kernel}<{', '.join(types)}>" if types else kernel


def _family_exprs():
    t1 = lambda k: [expr(k, t) for t in FLOAT_TYPES]  # noqa: E731
    t2 = lambda k, seconds: [expr(k, t, u) for t in FLOAT_TYPES for u in seconds]  # noqa: E731
    return {
        "dense": (t1("bias_act_forward") + t1("act_backward_bias_grad")
                  + t1("bias_grad_reduce") + t1("act_forward") + t1("act_backward")),
        "loss": (t1("softmax_forward") + t2("softmax_xent", INDEX_TYPES)
                 + t1("bce_logits") + t1("mse") + ["loss_stats_finish"]
                 + t2("softmax_xent_weighted", INDEX_TYPES) + t1("bce_logits_weighted") + t1("mse_weighted")),
        "optim": (t2("sgd_update", INDEX_TYPES) + t2("adam_update", INDEX_TYPES)
                  + t1("add_reg_grad") + t1("reg_penalty") + ["reg_penalty_finish"]
                  + t1("grad_sq_norms") + ["grad_clip_finish"] + t2("sgd_step", INDEX_TYPES)
                  + t2("adam_step", INDEX_TYPES) + t2("rmsprop_step", INDEX_TYPES)),
        "data": [expr("gather_rows", e, i) for e in GATHER_TYPES for i in INDEX_TYPES],
        "augment": t1("augment_images"),
        "conv": (t1("im2col") + t1("col2im") + t1("conv_bias_forward") + t1("conv_bias_backward")
                 + t1("column_sums") + t1("conv_bias_act_pool_forward") + t1("conv_bias_act_pool_backward")
                 + t1("channel_sums") + t1("transpose")),
        "pool": (t1("maxpool_forward") + t1("maxpool_backward") + t1("avgpool_forward") + t1("avgpool_backward")
                 + t1("global_avgpool_forward") + t1("global_avgpool_backward") + t1("global_maxpool_forward")
                 + t1("global_maxpool_backward")),
        "norm": (t1("channel_sums") + ["batchnorm_mean", "batchnorm_var", "batchnorm_eval_stats"]
                 + t1("batchnorm_apply") + t1("batchnorm_backward_sums")
                 + t1("batchnorm_backward_finish") + t1("batchnorm_backward_apply")),
        "dropout": t1("dropout_forward") + t1("dropout_backward"),
    }


NAME_EXPRESSIONS = _family_exprs()
FAMILIES = tuple(NAME_EXPRESSIONS)


def _candidate_dirs():
    here = os.path.dirname(os.path.abspath(__file__))   # .../fastmlp/backend/cuda
    package = os.path.dirname(os.path.dirname(here))    # .../fastmlp
    return (
        os.path.join(package, "_kernels"),                  # installed wheel (force-include)
        os.path.join(os.path.dirname(package), "kernels"),  # source checkout
    )


def kernels_dir():
    """The folder holding the ``.cu`` files, in a wheel or in a source checkout."""
    tried = _candidate_dirs()
    for d in tried:
        if all(os.path.isfile(os.path.join(d, f + ".cu")) for f in FAMILIES):
            return d
    raise FileNotFoundError(
        f"expected the CUDA kernels {', '.join(f + '.cu' for f in FAMILIES)} in one of "
        f"{', '.join(tried)}; found none (a broken install? reinstall fastmlp)")


def _check(family):
    if family not in NAME_EXPRESSIONS:
        raise ValueError(f"expected a kernel family in {FAMILIES}, got {family!r}")


def path(family):
    _check(family)
    return os.path.join(kernels_dir(), family + ".cu")


_INCLUDE = re.compile(r'#include "([\w.]+\.cuh)"\s*')


def source(family):
    """The CUDA C source of one family, as NVRTC compiles it: the .cu file with each
    ``#include "name.cuh"`` line replaced by that header from the same folder (one string
    for NVRTC, and for CuPy's cache key), then a #line directive, so that compiler
    messages keep the .cu file's line numbers."""
    with open(path(family), encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    out = []
    for number, line in enumerate(lines, 1):
        m = _INCLUDE.fullmatch(line)
        if m is None:
            out.append(line)
            continue
        header = os.path.join(kernels_dir(), m.group(1))
        if not os.path.isfile(header):
            raise FileNotFoundError(f"{family}.cu line {number}: expected the header {header}, found none")
        with open(header, encoding="utf-8") as f:
            out.append(f.read())
        out.append(f'#line {number + 1} "{family}.cu"\n')
    return "".join(out)


def options(family):
    """The NVRTC options of one family, a tuple as cupy.RawModule wants it."""
    _check(family)
    return OPTIONS + FAMILY_OPTIONS.get(family, ())


def name_expressions(family):
    """The instantiations of one family, the exact strings cupy.RawModule gets."""
    _check(family)
    return tuple(NAME_EXPRESSIONS[family])


def nvcc_unit(family):
    """A translation unit for ``nvcc``: the family's source followed by a table
    taking the address of every name expression, so nvcc instantiates (and
    checks) the same templates NVRTC emits. Line numbers of the source are kept."""
    refs = ",\n".join(f"    (const void*)&{e}" for e in name_expressions(family))
    return (source(family)
            + "\n// generated by fastmlp/backend/cuda/source.py: instantiate what NVRTC emits\n"
            + f"extern const void* const fastmlp_{family}_instances[] = {{\n{refs}\n}};\n")


if __name__ == "__main__":
    # python fastmlp/backend/cuda/source.py --nvcc-unit dense > dense_unit.cu
    # python fastmlp/backend/cuda/source.py --families
    # python fastmlp/backend/cuda/source.py --options dense
    args = sys.argv[1:]
    if args == ["--families"]:
        print(" ".join(FAMILIES))
    elif len(args) == 2 and args[0] == "--options":
        print(" ".join(options(args[1])))
    elif len(args) == 2 and args[0] == "--nvcc-unit":
        sys.stdout.write(nvcc_unit(args[1]))
    else:
        sys.exit("usage: source.py --families | --options FAMILY | --nvcc-unit FAMILY")
