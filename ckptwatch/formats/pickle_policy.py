"""What a pickle's globals mean for whoever loads it: code execution, or only ``weights_only=False``.

Pure policy over the ``module.name`` strings the stub unpickler recorded (``PickleWalk.globals``: the
exact pairs ``pickle.load`` would import, after the Python 2 name mapping). Two questions:

* **Unsafe** (problem ``unsafe_pickle``): would plain ``pickle.load`` / ``torch.load(weights_only=False)``
  hand the stream a callable that runs code, spawns processes, opens files or sockets, imports modules or
  unpickles a nested stream? The list below is a superset of the upstream scanners' (picklescan, used by
  the Hugging Face Hub; modelscan; fickling); docs/unsafe-pickles.md gives the comparison and the reasons
  where it differs. ``builtins`` is judged by an allow-list (fickling's approach: a new or forgotten
  builtin is unsafe by default), every other module by a deny-list.
* **Needs trust** (warning ``needs_weights_only_false``): is the global outside what
  ``torch.load(weights_only=True)`` accepts? ``WEIGHTS_ONLY_GLOBALS`` is torch 2.13's
  ``torch._weights_only_unpickler._get_allowed_globals()`` written out (a test compares it with the
  installed torch), and ``sys``/``os``/``posix``/``nt`` are refused whatever a user allow-lists, as there.

Dotted names are attribute paths (``find_class`` walks them with ``getattr``), so
``transformers.training_args`` + ``os.system`` reaches ``os.system`` through a harmless module: every
split of the full path is checked, and a path through a dunder attribute (``__globals__``,
``__builtins__``, ``__subclasses__``...) is unsafe by itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from ckptwatch.model import Problem, Record, set_field

# module -> "*" (every name) or the names (dotted qualnames allowed) that are code-execution vectors.
# fmt: off
_ALL = "*"
UNSAFE_MODULES: dict[str, str | frozenset[str]] = {
    # processes, the OS and the interpreter
    "os": _ALL, "posix": _ALL, "nt": _ALL, "sys": _ALL, "subprocess": _ALL, "_posixsubprocess": _ALL,
    "pty": _ALL, "commands": _ALL, "multiprocessing": _ALL, "_winapi": _ALL, "signal": _ALL,
    "_signal": _ALL, "_thread": _ALL, "threading": _ALL, "atexit": _ALL,
    # code objects, compilation, imports
    "code": _ALL, "codeop": _ALL, "runpy": _ALL, "marshal": _ALL, "importlib": _ALL, "_imp": _ALL,
    "imp": _ALL, "_frozen_importlib": _ALL, "_frozen_importlib_external": _ALL, "zipimport": _ALL,
    "pkgutil": _ALL, "site": _ALL, "inspect": _ALL, "gc": _ALL, "compileall": _ALL, "py_compile": _ALL,
    "types": frozenset({"FunctionType", "LambdaType", "CodeType", "MethodType", "BuiltinFunctionType",
                        "BuiltinMethodType", "CellType", "new_class", "prepare_class", "ModuleType",
                        "GeneratorType", "CoroutineType", "FrameType", "TracebackType"}),
    # nested (de)serialisers that run code of their own
    "pickle": _ALL, "_pickle": _ALL, "pickletools": _ALL, "shelve": _ALL, "dill": _ALL,
    "cloudpickle": _ALL, "joblib": _ALL, "jsonpickle": _ALL,
    "yaml": frozenset({"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all",
                       "UnsafeLoader", "Loader", "FullLoader"}),
    # native code
    "ctypes": _ALL, "_ctypes": _ALL, "cffi": _ALL,
    # debuggers, profilers, REPLs, doc tools: each runs code given as text
    "pdb": _ALL, "bdb": _ALL, "cProfile": _ALL, "profile": _ALL, "timeit": _ALL, "trace": _ALL,
    "doctest": _ALL, "pydoc": _ALL, "idlelib": _ALL, "lib2to3": _ALL, "_pyrepl": _ALL, "rlcompleter": _ALL,
    "test": _ALL, "unittest": _ALL,
    # the network
    "socket": _ALL, "_socket": _ALL, "ssl": _ALL, "socketserver": _ALL, "http": _ALL, "httplib": _ALL,
    "urllib": _ALL, "urllib2": _ALL, "requests": _ALL, "aiohttp": _ALL, "asyncio": _ALL, "smtplib": _ALL,
    "imaplib": _ALL, "ftplib": _ALL, "poplib": _ALL, "telnetlib": _ALL, "nntplib": _ALL, "xmlrpc": _ALL,
    "webbrowser": _ALL, "select": _ALL, "selectors": _ALL,
    # files and installs
    "shutil": _ALL, "tempfile": _ALL, "distutils": _ALL, "setuptools": _ALL, "pip": _ALL, "ensurepip": _ALL,
    "venv": _ALL, "mmap": _ALL, "fileinput": _ALL, "glob": _ALL, "tarfile": _ALL, "zipfile": _ALL,
    "io": frozenset({"open", "open_code", "FileIO"}), "_io": frozenset({"open", "open_code", "FileIO"}),
    "codecs": frozenset({"open", "EncodedFile"}), "pathlib": frozenset({"Path.open", "Path.write_text",
                                                                        "Path.write_bytes", "Path.unlink"}),
    "logging": frozenset({"FileHandler", "config", "handlers"}), "logging.config": _ALL,
    "logging.handlers": _ALL,
    # stdlib modules that shell out
    "uuid": _ALL, "platform": _ALL, "_osx_support": _ALL, "_aix_support": _ALL, "ctypes.util": _ALL,
    # callables that call what they are given or fetch attributes by name (gadget builders)
    "operator": frozenset({"attrgetter", "methodcaller", "itemgetter", "call"}),
    "_operator": frozenset({"attrgetter", "methodcaller", "itemgetter", "call"}),
    "functools": frozenset({"partial", "reduce", "partialmethod", "singledispatch"}),
    "_functools": frozenset({"partial", "reduce"}),
    # the ML stack: loaders of other files or of code, JIT compilers, string evaluators
    "torch": frozenset({"load", "compile", "hub"}),
    "torch.serialization": frozenset({"load", "_load", "_legacy_load"}),
    "torch.storage": frozenset({"_load_from_bytes"}),
    "torch.hub": _ALL, "torch.jit": _ALL, "torch._dynamo": _ALL, "torch._inductor": _ALL,
    "torch.package": _ALL, "torch.utils.cpp_extension": _ALL, "torch.utils.bottleneck": _ALL,
    "torch.utils.collect_env": _ALL, "torch.utils._config_module": _ALL,
    "torch.fx.experimental.symbolic_shapes": frozenset({"ShapeEnv.evaluate_guards_expression"}),
    "torch.utils.data.datapipes.utils.decoder": frozenset({"basichandlers"}),
    "torch.distributed.elastic.rendezvous.api": _ALL,
    "numpy": frozenset({"load", "loads"}), "numpy.f2py": _ALL, "numpy.distutils": _ALL,
    "numpy.testing": _ALL, "numpy.lib.npyio": frozenset({"load"}),
    "sympy": frozenset({"sympify", "parse_expr"}), "sympy.core.sympify": _ALL, "sympy.parsing": _ALL,
    "pandas": frozenset({"eval", "read_pickle"}), "pandas.core.computation": _ALL,
}

# builtins a pickle may name without running code: constructors of data and pure functions.
SAFE_BUILTINS = frozenset({
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "set", "frozenset",
    "dict", "slice", "range", "object", "type", "NoneType", "Ellipsis", "NotImplemented", "len", "abs",
    "sum", "min", "max", "round", "pow", "divmod", "sorted", "reversed", "enumerate", "zip", "map",
    "filter", "all", "any", "hash", "repr", "ascii", "bin", "hex", "oct", "ord", "chr", "isinstance",
    "issubclass", "format", "property", "staticmethod", "classmethod",
    # exception classes are pickled by name with their args (a failed run's saved error, say)
    "Exception", "BaseException", "ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError",
    "AttributeError", "NotImplementedError", "StopIteration", "OSError", "AssertionError", "ArithmeticError",
    "ZeroDivisionError", "OverflowError", "MemoryError", "Warning", "UserWarning", "DeprecationWarning",
})
_BUILTIN_MODULES = ("builtins", "__builtin__", "__builtins__")
# Names that run code or reach the OS whatever module re-exports them (``somemod.os.system``).
_UNSAFE_LEAVES = frozenset({"exec", "eval", "execfile", "system", "popen", "__import__", "spawnv", "spawnl",
                            "execv", "execve", "execl", "fork", "startfile"})
# Dunders a legitimate reduce tuple names (``cls.__new__``); any other dunder on the path is introspection.
_HARMLESS_DUNDERS = frozenset({"__new__", "__init__", "__call__"})
MAX_PATH_PARTS = 12
MAX_NAMED = 5  # globals named one by one in a message

# torch 2.13: torch._weights_only_unpickler._get_allowed_globals() (tests/test_pickle_policy.py keeps it so)
_TORCH_TYPES = ("BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short")
WEIGHTS_ONLY_BLOCKED_MODULES = ("sys", "os", "posix", "nt")
WEIGHTS_ONLY_GLOBALS: frozenset[str] = frozenset({
    "_codecs.encode", "builtins.bytearray", "builtins.complex", "builtins.set", "collections.Counter",
    "collections.OrderedDict", "torch.Size", "torch.Tensor", "torch.device", "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout", "torch._tensor._rebuild_from_type_v2",
    "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    *(f"torch._utils._rebuild_{n}" for n in (
        "device_tensor_from_cpu_tensor", "device_tensor_from_numpy", "meta_tensor_no_storage",
        "nested_tensor", "parameter", "parameter_with_state", "qtensor", "sparse_tensor", "tensor",
        "tensor_v2", "tensor_v3", "wrapper_subclass")),
    *(f"torch.{t}" for t in (
        "bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128", "complex32",
        "complex64", "float16", "float32", "float4_e2m1fn_x2", "float64", "float8_e4m3fn", "float8_e4m3fnuz",
        "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "qint32", "qint8", "quint2x4", "quint4x2",
        "quint8", *(f"int{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)),
        *(f"uint{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)),
        "per_channel_affine", "per_channel_affine_float_qparams", "per_channel_symmetric",
        "per_tensor_affine", "per_tensor_symmetric")),
    *(f"{m}.{t}Storage" for m in ("torch", "torch.cuda") for t in (*_TORCH_TYPES, "ComplexDouble",
                                                                    "ComplexFloat")),
    *(f"torch.{t}Storage" for t in ("QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")),
    *(f"{m}.{t}Tensor" for m in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")
      for t in _TORCH_TYPES if not (m.endswith("sparse") and t == "Bool")),
})
# fmt: on


def _module_hit(module: str, name: str) -> bool:
    rule = UNSAFE_MODULES.get(module)
    if rule is not None and (rule == _ALL or name in rule or name.split(".", 1)[0] in rule):
        return True
    # a sub-module of a module that is unsafe as a whole (os.path, importlib.util, torch.jit._script)
    parts = module.split(".")
    return any(UNSAFE_MODULES.get(".".join(parts[:i])) == _ALL for i in range(1, len(parts)))


def unsafe_reason(full: str) -> str | None:
    """Why loading a pickle that names ``full`` ("module.qualname") can run code, or None.

    The recorded string does not say where the module ends; every split is tried, as ``find_class``
    would import the module part and ``getattr`` its way along the rest.
    """
    parts = full.split(".")
    if len(parts) > MAX_PATH_PARTS:
        return f"an attribute path of {len(parts)} parts, deeper than any class"
    for p in parts[1:]:
        if p.startswith("__") and p.endswith("__") and p not in _HARMLESS_DUNDERS:
            return f"an attribute path through {p}, which reaches arbitrary objects"
    if parts[-1] in _UNSAFE_LEAVES:
        return f"{parts[-1]} runs code or a command"
    for start in range(len(parts) - 1):
        for cut in range(start + 1, len(parts)):
            module, name = ".".join(parts[start:cut]), ".".join(parts[cut:])
            if module in _BUILTIN_MODULES:
                if name.split(".", 1)[0] not in SAFE_BUILTINS or "." in name:
                    return f"the builtin {name} can run code, import modules or open files"
            elif _module_hit(module, name):
                return f"{module} can run code, commands, imports, files or network access"
    return None


def weights_only_refuses(full: str) -> bool:
    """True when ``torch.load(weights_only=True)`` (torch 2.13, no user allow-list) refuses the global."""
    module = full.rsplit(".", 1)[0] if "." in full else full
    return module in WEIGHTS_ONLY_BLOCKED_MODULES or full not in WEIGHTS_ONLY_GLOBALS


class PickleGlobals(Record):
    """The judgement of one stream's globals: (global, why) that run code, and those that need trust."""

    __slots__ = ("unsafe", "needs_trust")
    unsafe: tuple[tuple[str, str], ...]
    needs_trust: tuple[str, ...]

    def __init__(self, unsafe: tuple[tuple[str, str], ...], needs_trust: tuple[str, ...]) -> None:
        set_field(self, "unsafe", unsafe)
        set_field(self, "needs_trust", needs_trust)


@functools.lru_cache(maxsize=256)
def _judge(globals_: frozenset[str]) -> PickleGlobals:
    unsafe, trust = [], []
    for g in sorted(globals_):
        why = unsafe_reason(g)
        if why is not None:
            unsafe.append((g, why))
        elif weights_only_refuses(g):
            trust.append(g)
    return PickleGlobals(tuple(unsafe), tuple(trust))


def judge_globals(globals_: Iterable[str]) -> PickleGlobals:
    """Classify the globals of one pickle (memoised: every checkpoint of a run repeats the same sets)."""
    return _judge(globals_ if isinstance(globals_, frozenset) else frozenset(globals_))


def _shown(g: str) -> str:
    g = g if g.isprintable() else ascii(g)[1:-1]
    return g if len(g) <= 120 else g[:117] + "..."


def pickle_problems(globals_: Iterable[str], file: str, label: str, *, weights_only_applies: bool = True,
                    root: str | None = None) -> list[Problem]:
    """The findings on one pickle stream's globals: ``unsafe_pickle``, else ``needs_weights_only_false``.

    ``label`` names the stream ("optimizer.pt: optimizer/data.pkl"); ``weights_only_applies`` is False for
    streams their framework always loads with plain ``pickle.load`` (DCP ``.metadata``), where a global
    outside torch's allow-list is no news. ``root``: the class of the unpickled object, named first
    (``transformers.training_args.TrainingArguments`` says more than the enums it holds).
    """
    judged = judge_globals(globals_)
    if judged.unsafe:
        (g, why), rest = judged.unsafe[0], judged.unsafe[1:]
        more = ""
        if rest:
            more = "; also " + ", ".join(_shown(x) for x, _ in rest[:MAX_NAMED]) + (
                f" and {len(rest) - MAX_NAMED} more" if len(rest) > MAX_NAMED else "")
        return [Problem("unsafe_pickle", file,
                        f"{label} references {_shown(g)} ({why}){more}: torch.load(weights_only=False) or "
                        "pickle.load of this file runs it")]
    if judged.needs_trust and weights_only_applies:
        trust = sorted(judged.needs_trust, key=lambda g: g != root)
        names = ", ".join(_shown(x) for x in trust[:MAX_NAMED])
        extra = len(judged.needs_trust) - MAX_NAMED
        return [Problem("needs_weights_only_false", file,
                        f"{label}: torch.load(weights_only=True) refuses it; needs weights_only=False: "
                        f"{names}"
                        + (f" and {extra} more" if extra > 0 else ""))]
    return []
