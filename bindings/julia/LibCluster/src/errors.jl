# The exceptions a Distributed user expects, and how library failures map to
# them. `ClusterError` (capi.jl) remains for failures with no Distributed
# counterpart (authentication, I/O, protocol, shutdown...).

"""
    RemoteException(pid, captured::CapturedException)

An exception thrown by a remote call on process `pid`: `captured.ex` is the
remote exception itself, `captured.processed_bt` its backtrace frames and
`backtrace` the same backtrace as text, as the remote process printed it.
As Distributed's `RemoteException`, with the backtrace text added.
"""
struct RemoteException <: Exception
    pid::Int
    captured::CapturedException
    backtrace::String
end

function RemoteException(pid::Integer, captured::CapturedException)
    RemoteException(Int(pid), captured, backtrace_text(captured.processed_bt))
end
RemoteException(captured::CapturedException) = RemoteException(myid(), captured)

"The remote exception carried by `e`."
remote_error(e::RemoteException) = e.captured.ex

function backtrace_text(bt)
    isempty(bt) && return ""
    try
        sprint(io -> Base.show_backtrace(io, bt))
    catch
        ""
    end
end

function Base.showerror(io::IO, re::RemoteException)
    (re.pid != myid_or_zero()) && print(io, "On worker ", re.pid, ":\n")
    if isempty(re.captured.processed_bt) && !isempty(re.backtrace)
        showerror(io, re.captured.ex)
        print(io, re.backtrace)
    else
        showerror(io, re.captured)
    end
end

"""
    ProcessExitedException(worker_id)

Process `worker_id` has exited (or died): pending calls to it fail with this
exception, as do later calls to it.
"""
struct ProcessExitedException <: Exception
    worker_id::Int
end
ProcessExitedException() = ProcessExitedException(-1)

function Base.showerror(io::IO, e::ProcessExitedException)
    print(io, "ProcessExitedException(", e.worker_id, "): ")
    print(io, e.worker_id > 0 ? "process $(e.worker_id) has exited" : "the process has exited")
end

myid_or_zero() = RT.ctx == C_NULL ? 0 : RT.myid

"""
    library_exception(err::ClusterError, target, outcome=false) -> Exception

The exception a Distributed user expects for a library failure of a call to
process `target`: of the call itself, or of its `outcome` (a future's).
"""
function library_exception(err::CAPI.ClusterError, target::Integer = 0, outcome::Bool = false)
    st = err.status
    pid = err.pid != 0 ? err.pid : Int(target)
    if st == CAPI.CLUSTER_ERR_PROCESS_EXITED
        return ProcessExitedException(pid)
    elseif st == CAPI.CLUSTER_ERR_NO_SUCH_PROCESS
        return ErrorException("no process with id $(target != 0 ? target : pid) exists")
    elseif st == CAPI.CLUSTER_ERR_REMOTE
        msg = strip_remote_prefix(err.msg)
        if occursin(r"function LibCluster\.(call|do) is not registered", msg)
            msg = "process $pid is not a Julia (LibCluster) worker: $msg; " *
                  "call the functions it registered with remotecall_fetch_raw"
        end
        return RemoteException(pid, CapturedException(ErrorException(msg), Any[]))
    elseif st == CAPI.CLUSTER_ERR_INTERRUPTED
        return RemoteException(pid, CapturedException(InterruptException(), Any[]), "")
    elseif st == CAPI.CLUSTER_ERR_NOT_HEAD
        return ErrorException("Only process 1 can add and remove workers")
    elseif st == CAPI.CLUSTER_ERR_TOPOLOGY
        return ErrorException(err.msg)
    elseif st == CAPI.CLUSTER_ERR_TOO_LARGE
        # Over max_message_bytes: the arguments here (as a message that cannot
        # be serialized is), or the result there (a remote failure).
        msg = strip_remote_prefix(err.msg) * " (max_message_bytes, see LibCluster.init)"
        return outcome ? RemoteException(pid, CapturedException(ErrorException(msg), Any[])) : ErrorException(msg)
    end
    return err
end

# "remote error on process 3: function x is not registered on process 3"
strip_remote_prefix(m::AbstractString) = replace(m, r"^remote error on process \d+: " => "")

"Throws the Distributed-style exception for a failed status of a call to `target`."
@noinline throw_status(st::Int32, target::Integer = 0) = throw(library_exception(CAPI.last_error(st), target))

"Checks a status of a call concerning process `target`."
@inline function check_call(st::Int32, target::Integer = 0)
    st == CAPI.CLUSTER_OK || throw_status(st, target)
    nothing
end

# Frames without their MethodInstance: plain data that any process can
# deserialize, even where the remote method does not exist.
# LibCluster's own frames below the user's code are dropped.
const SERVE_FRAMES = (:run_julia_call, :run_raw_call, :run_call, :run_map_call, :run_fork_child)

function portable_backtrace(bt)
    out = Any[]
    try
        for (fr, n) in Base.process_backtrace(bt, 100)
            fr.func in SERVE_FRAMES && break
            push!(out, (Base.StackTraces.StackFrame(fr.func, fr.file, fr.line, nothing, fr.from_c, fr.inlined, fr.pointer), n))
        end
        while !isempty(out) && occursin("invokelatest", String(out[end][1].func))
            pop!(out)
        end
    catch
        empty!(out)
    end
    out
end

"A `CapturedException` of `e` and backtrace `bt` that can cross to another process."
capture(e, bt) = CapturedException(e, portable_backtrace(bt))
