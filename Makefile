PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: install viewer demo test typecheck bench lint clean

CONSTRAINTS := constraints.txt

.venv/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch .venv/.installed

# The AWS CLI pins its own botocore, which would fight s3fs/aiobotocore's pin:
# it gets a venv of its own. Tests and benches call it against the local service.
.awscli/bin/aws:
	python3 -m venv .awscli
	.awscli/bin/pip install --quiet "awscli==1.46.3"

# OHIF's prebuilt viewer for `dicom-import view`: the version and checksum
# pinned in cli/viewer/ohif.py, fetched with npm once, only its dist/ kept.
viewer: .venv/.installed
	$(PY) -m cli.viewer.ohif

install: .venv/.installed .awscli/bin/aws viewer

demo: install
	.venv/bin/dicom-import demo

# Four workers on two cores: most of the suite's time is waiting (servers,
# import jobs, subprocesses). loadgroup hands tests out one at a time in the
# order tests/conftest.py sets (heaviest first), and keeps an xdist_group on
# one worker.
test: install
	$(PY) -m pytest -n 4 --dist loadgroup --no-loadscope-reorder --durations=25

typecheck: .venv/.installed
	$(PY) -m mypy

bench: install
	$(PY) -m bench

lint: .venv/.installed
	.venv/bin/ruff check .

clean:
	rm -rf .venv .awscli .viewer .pytest_cache .ruff_cache .mypy_cache build *.egg-info
