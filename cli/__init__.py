"""The `grader` command, on top of every other package: serve the API, train and evaluate models,
build datasets from the line, reset keys, synthesise fruit and run a stand-in sorter.

    grader serve [--host 127.0.0.1] [--port 8000] [--workers 1]
    grader train [--config FILE] [--set key=value ...] [--from-dataset DIR] --out DIR [--work-dir DIR] [--resume]
    grader compare CURRENT CANDIDATE --data DIR [--split test] [--out DIR] [--gate key=value ...]
    grader evaluate ARTIFACT [--data DIR] [--split test] [--out DIR]
    grader dataset build --out DIR [--since T] [--lot L] [--base ../shared/data/fruitnet-apples]
    grader dataset suggest [--limit 20] [--route]
    grader keys reset
    grader synth --video --out belt.avi [--seconds 30] [--lanes 3] [--mm-per-px 0.6]
    grader synth --out fruit.jpg [--diameter-mm 72] [--mm-per-px 0.3] [--blemish-cm2 0.8]
    grader sorter-sim [--mqtt-url mqtt://127.0.0.1:1883] [--delay-s 1] [--mis-ejection-rate 0.05] [--miss-rate 0]

`python -m cli ...` is the same as `grader ...`. Nothing imports this package (tests may).
"""
