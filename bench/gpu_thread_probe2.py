import sys, threading, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_thread_probe import plain
def twice():
    for i in range(3): print("same worker thread, call", i, round(plain(), 1), flush=True)
t = threading.Thread(target=twice); t.start(); t.join()
print("main", round(plain(), 1))
