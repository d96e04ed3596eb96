from services.core.service import run
from services.evaluator.service import EvaluatorServer

run(EvaluatorServer.from_env)
