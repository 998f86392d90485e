"""The real benchmarks: MTIL's 11 datasets (Orders I and II) and X-TAIL, read with torchvision
from one data root, checked before training, plus tiny on-disk fixtures for tests.

    make_mtil(root, order="I")     -> Benchmark (11 tasks, label_space "task")
    make_xtail(root)               -> Benchmark (10 tasks, label_space "union")
    make_task(name, root)          -> Task
    check_root(root, names)        -> list of problems (empty: ready to train)
    write_fixtures(tmp_dir)        -> tiny copies of all 11 layouts, and their counts

See data/README.md for where each dataset comes from and the folder tree it needs.
"""
from r1lab.data.mtil.checks import (DATASETS, DataRootProblems, DatasetError, DatasetIncomplete,
                                    DatasetNotFound, expected_counts)
from r1lab.data.mtil.verify import check_root, few_shot_problems
from r1lab.data.mtil.fixtures import write_fixtures
from r1lab.data.mtil.folders import (CLASSNAMES, ORDERS, TEMPLATES, XTAIL_ORDER, TaskSplit, UnionLabels,
                                     load_dataset, make_mtil, make_task, make_xtail, mtil_transforms,
                                     union_label_space)

__all__ = [
    "DATASETS", "ORDERS", "XTAIL_ORDER", "CLASSNAMES", "TEMPLATES",
    "make_task", "make_mtil", "make_xtail", "load_dataset", "mtil_transforms", "union_label_space",
    "UnionLabels", "TaskSplit", "check_root", "few_shot_problems", "expected_counts", "write_fixtures",
    "DatasetError", "DatasetNotFound", "DatasetIncomplete", "DataRootProblems",
]
