PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: install demo test bench lint clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch .venv/.installed

install: .venv/.installed

demo: .venv/.installed
	.venv/bin/dicom-import demo

test: .venv/.installed
	$(PY) -m pytest

bench: .venv/.installed
	$(PY) -m bench

lint: .venv/.installed
	.venv/bin/ruff check .

clean:
	rm -rf .venv .pytest_cache .ruff_cache build *.egg-info
