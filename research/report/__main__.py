"""python -m research.report WORKDIR [--out FILE.html]"""
from research.report import main

main()
