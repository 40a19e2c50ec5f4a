# LibCluster.PTools: PTools.jl's WorkerSet and queued tasks. Expected results
# are PTools' behaviour (amitmurthy/PTools.jl, test/test_worker_set.jl and
# QUEUEDTASKS.md), with the guarantees PTools lacks (FIFO among equal
# priorities, a failed call giving its worker back, no hang on dead workers).
# Included from runtests.jl; uses its `within` and `@progress`.

using LibCluster.PTools
const PT = LibCluster.PTools

@testset "PTools: WorkerSet and queued tasks" begin
    @progress "PTools"
    mine = addprocs(4; lazy = something(LibCluster.LAZY[], true))   # as the workers there are
    LAST_ID[] = max(LAST_ID[], maximum(mine))
    a, b, c, victim = mine
    # Task data types are defined everywhere, as in PTools.
    @everywhere struct PJob <: LibCluster.PTools.WorkerTask
        n::Int
    end
    # What the queued-task tests read on the workers (in a module: Main
    # globals would travel with the calls).
    @everywhere [myid(); mine] module PTTest
        using LibCluster.API: myid
        const LOG = Int[]
        const STARTED = Ref(false)
        const GATE = Ref(false)
        log(j) = (push!(LOG, j.n); myid())
        blocker(j) = (STARTED[] = true; while !GATE[]; sleep(0.005); end; myid())
        reset() = (empty!(LOG); STARTED[] = false; GATE[] = false; nothing)
        started() = STARTED[]
        open() = (GATE[] = true; nothing)
        logged() = copy(LOG)
    end
    try
        @testset "WorkerSet round robin" begin
            ws = WorkerSet([a, b, c], WS_MODE_RR)
            # PTools' test: 2, 3, 4, 2 for [2, 3, 4]; its argument order and Distributed's.
            @test [remotecall_fetch(ws, myid) for _ in 1:4] == [a, b, c, a]
            @test [LibCluster.remotecall_fetch(myid, ws) for _ in 1:3] == [b, c, a]
            @test fetch(remotecall(myid, ws)) == b
            @test fetch(remotecall(ws, myid)) == c
            @test fetch(remotecall_wait(myid, ws)) == a
            @test remotecall_fetch(+, ws, 1, 2) == 3
            @test_throws ArgumentError WorkerSet(Int[])
            @test WorkerSet([a]).mode == WS_MODE_RR
        end

        @testset "WorkerSet first free: idle workers, FIFO queue" begin
            ff = WorkerSet([a, b], WS_MODE_FF)
            # Each call reports (its number, worker, start, end); times from
            # one clock (one machine). Calls 1 and 2 take the two workers,
            # 3 and 4 queue, in that order.
            work(i, s) = () -> (t0 = time(); sleep(s); (i, myid(), t0, time()))
            ts = Task[]
            push!(ts, @async remotecall_fetch(work(1, 0.6), ff))
            push!(ts, @async remotecall_fetch(work(2, 0.2), ff))
            within(10, "calls 1 and 2 to take the workers") do
                while ff.busy < 2; sleep(0.001); end
            end
            push!(ts, @async remotecall_fetch(work(3, 0.2), ff))
            within(10, "call 3 to queue") do
                while length(ff.waiters) < 1; sleep(0.001); end
            end
            push!(ts, @async remotecall_fetch(work(4, 0.2), ff))
            within(10, "call 4 to queue") do
                while length(ff.waiters) < 2; sleep(0.001); end
            end
            r = within(30, "the first-free calls") do
                map(fetch, ts)
            end
            @test [x[1] for x in r] == [1, 2, 3, 4]
            @test sort([r[1][2], r[2][2]]) == sort([a, b])          # both workers used at once
            first_done, second_done = sort(r[1:2]; by = x -> x[4])
            # Call 3 (queued first) went to the first worker to finish, after it finished;
            # call 4 to the next worker that finished, after call 3 started.
            @test r[3][2] == first_done[2] && r[3][3] >= first_done[4]
            @test r[4][3] >= r[3][3]
            @test r[4][3] >= min(second_done[4], r[3][4])
            # Queued calls are never dropped: 12 at once over 2 workers.
            many = within(60, "12 calls on a first-free set") do
                asyncmap(i -> remotecall_fetch(x -> (sleep(0.01); (x, myid())), ff, i), 1:12; ntasks = 12)
            end
            @test [m[1] for m in many] == 1:12
            @test Set(m[2] for m in many) == Set([a, b])
            @test isempty(ff.waiters) && sort(ff.freeset) == sort([a, b]) && ff.busy == 0
            # remotecall (PTools: RR only) waits for an idle worker; the worker
            # comes back when the call completes.
            f = remotecall(() -> (sleep(0.1); myid()), ff)
            @test fetch(f) in (a, b)
            within(10, "the worker to come back") do
                while ff.busy != 0; sleep(0.001); end
            end
            @test fetch(remotecall_wait(myid, ff)) in (a, b)
        end

        @testset "WorkerSet first free: failures give the worker back" begin
            one = WorkerSet([a], WS_MODE_FF)
            @test_throws RemoteException remotecall_fetch(() -> error("boom"), one)
            @test within(10, "a call after a failed one") do
                remotecall_fetch(myid, one)
            end == a
            # A failing call with others queued behind it: each gets its outcome.
            ts = [@async(try remotecall_fetch(i -> (sleep(0.05); i == 2 && error("no $i"); i), one, i) catch e; e end)
                  for i in 1:4]
            r = within(20, "queued calls behind a failure") do
                map(fetch, ts)
            end
            @test r[[1, 3, 4]] == [1, 3, 4] && r[2] isa RemoteException
            # A worker that dies mid-call: that call fails, the queued ones
            # run on the other worker, and the dead one leaves the set.
            ff = WorkerSet([victim, a], WS_MODE_FF)
            dying = @async(try remotecall_fetch(() -> exit(0), ff) catch e; e end)
            yield()
            rest = [@async remotecall_fetch(() -> (sleep(0.05); myid()), ff) for _ in 1:3]
            @test within(30, "the call on the dying worker") do
                fetch(dying)
            end isa ProcessExitedException
            @test within(30, "the calls queued meanwhile") do
                map(fetch, rest)
            end == [a, a, a]
            within(10, "the worker to leave") do
                while victim in procs(); sleep(0.01); end
            end
            @test remotecall_fetch(myid, ff) == a && !(victim in ff.freeset)
            # No live worker left in a set: an error, not a hang.
            e = try remotecall_fetch(myid, WorkerSet([victim], WS_MODE_FF)) catch e; e end
            @test e isa ErrorException && occursin("no live worker", e.msg)
            e = try remotecall_fetch(myid, WorkerSet([victim], WS_MODE_RR)) catch e; e end
            @test e isa ErrorException && occursin("no live worker", e.msg)
            @test remotecall_fetch(myid, WorkerSet([victim, b])) == b     # RR skips the dead
        end
        live = [a, b, c]

        @testset "queued tasks: targets" begin
            prep_remotes()
            @test num_remotes() == nworkers()
            got = Any[]
            cb = (w, r) -> (sleep(0.001); push!(got, (w.n, r)))   # callbacks may yield
            # A pid.
            @test execute_worker_task(QueuedWorkerTask(PJob(1), j -> (myid(), j.n), cb, b)) == (b, 1)
            @test isempty(got)        # execute_worker_task replaces the callback (PTools)
            # A list of pids: runs once, on one of them.
            t = queue_worker_task(QueuedWorkerTask(PJob(2), j -> myid(), cb, [a, c]))
            @test t isa QueuedWorkerTask
            @test within(20, "a task for a pid list") do
                fetch(t)
            end in (a, c)
            @test length(got) == 1 && got[1][1] == 2
            # A host (by name; a list of names, as PTools).
            host = remotecall_fetch(gethostname, a)
            @test execute_worker_task(QueuedWorkerTask(PJob(3), j -> myid(), nothing, host)) in workers()
            @test execute_worker_task(QueuedWorkerTask(PJob(3), j -> myid(), nothing, [host])) in workers()
            # Any worker.
            @test execute_worker_task(QueuedWorkerTask(PJob(4), j -> myid(), nothing, :wrkr_any)) in workers()
            # All workers: once on each, each run's result to the callback.
            empty!(got)
            t = queue_worker_task(QueuedWorkerTask(PJob(5), j -> myid(), cb, :wrkr_all))
            within(30, "a task for all workers") do
                wait(t)
            end
            @test sort([g[2] for g in got]) == sort(workers())
            @test sort(t.results) == sort(workers())
            # A method that throws: the callback gets the RemoteException
            # (naming the worker), execute_worker_task throws it.
            empty!(got)
            t = queue_worker_task(QueuedWorkerTask(PJob(6), j -> error("task $(j.n) failed"), cb, [a, b]))
            wait(t)
            @test length(got) == 1 && got[1][2] isa RemoteException && got[1][2].pid in (a, b)
            e = try execute_worker_task(QueuedWorkerTask(PJob(7), j -> error("no"), nothing, c)) catch e; e end
            @test e isa RemoteException && e.pid == c && e.captured.ex == ErrorException("no")
            @test_throws ErrorException queue_worker_task(QueuedWorkerTask(PJob(8), j -> 0, nothing, :nowhere))
            @test_throws ArgumentError QueuedWorkerTask(PJob(8), j -> 0, nothing, 2.5)
        end

        @testset "queued tasks: priorities, FIFO, set_priorities, dequeue" begin
            remotecall_fetch(PTTest.reset, b)
            order = Int[]
            cb = (w, r) -> push!(order, w.n)
            blocker = queue_worker_task(QueuedWorkerTask(PJob(0), PTTest.blocker, cb, b))
            within(20, "the blocking task to start") do
                while !remotecall_fetch(PTTest.started, b); sleep(0.005); end
            end
            ts = [queue_worker_task(QueuedWorkerTask(PJob(n), PTTest.log, cb, b)) for n in 1:7]
            # Lower runs first; equals (Inf, PTools' default) in queueing order.
            seen = Any[]
            set_priorities() do target, t, prio
                push!(seen, (target, t.wtask.n, prio))
                n = t.wtask.n
                n == 4 ? 0.5 : n in (2, 5) ? 1.0 : prio
            end
            @test sort(seen; by = x -> x[2]) == [(b, n, Inf) for n in 1:7]
            # Dequeued while queued: never runs; waiting on it fails.
            @test dequeue_worker_task(ts[3]) == true
            @test dequeue_worker_task(ts[3]) == false
            # Re-prioritised while queued: 6 now first.
            set_priorities((target, t, prio) -> t.wtask.n == 6 ? 0.0 : prio)
            # A filter: dequeues those it is false for (7).
            @test dequeue_worker_task(t -> t.wtask.n != 7) == 1
            remotecall_fetch(PTTest.open, b)
            within(30, "the queued tasks") do
                foreach(wait, [blocker; ts])
            end
            @test remotecall_fetch(PTTest.logged, b) == [6, 4, 2, 5, 1]
            @test order == [0, 6, 4, 2, 5, 1]              # callbacks: not for the dequeued
            e = try fetch(ts[3]) catch e; e end
            @test e isa ErrorException && occursin("dequeued", e.msg)
            @test_throws ErrorException fetch(ts[7])
            # Queueing a queued task again replaces it (one entry, as PTools' queues).
            remotecall_fetch(PTTest.reset, b)
            blocker = queue_worker_task(QueuedWorkerTask(PJob(0), PTTest.blocker, nothing, b))
            within(20, "the blocking task to start") do
                while !remotecall_fetch(PTTest.started, b); sleep(0.005); end
            end
            t1 = queue_worker_task(QueuedWorkerTask(PJob(1), PTTest.log, nothing, b))
            t2 = queue_worker_task(QueuedWorkerTask(PJob(2), PTTest.log, nothing, b))
            queue_worker_task(t1)                           # now behind 2
            remotecall_fetch(PTTest.open, b)
            within(30, "the requeued task") do
                foreach(wait, (blocker, t1, t2))
            end
            @test remotecall_fetch(PTTest.logged, b) == [2, 1]
            @test fetch(t1) == b
        end
    finally
        rmprocs(filter(in(procs()), mine))
    end
end
