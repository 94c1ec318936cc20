import signal

from django.core.management.base import BaseCommand

from inference.worker import InferenceWorker


class Command(BaseCommand):
    help = "Run an inference worker: holds the models and serves chat replies from Redis (one per GPU, or one on CPU)."

    def add_arguments(self, parser):
        parser.add_argument("--worker-id", default=None, help="Unique id (default: <hostname>-<pid>).")
        parser.add_argument("--max-batch", type=int, default=None, help="Most replies decoded together.")

    def handle(self, *args, worker_id=None, max_batch=None, **options):
        worker = InferenceWorker(worker_id=worker_id, max_batch=max_batch)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker.stop())
        worker.run()
