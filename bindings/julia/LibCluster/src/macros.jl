# The Distributed macros: @spawnat, @spawn, @fetch, @fetchfrom, @everywhere,
# and the functions behind them.

const NEXT_IDX = Ref(0)

"The next worker, round-robin over `workers()` (as Distributed's `nextproc`)."
function nextproc()
    ws = workers()
    p = ws[(NEXT_IDX[] % length(ws)) + 1]
    NEXT_IDX[] += 1
    p
end

spawnat(p, thunk) = remotecall(thunk, p)
spawn_somewhere(thunk) = spawnat(nextproc(), thunk)

function spawn_expr(p, expr)
    thunk = esc(:(() -> ($expr)))
    var = esc(Base.sync_varname)
    spawncall = p === QuoteNode(:any) ? :($spawn_somewhere($thunk)) : :($spawnat($(esc(p)), $thunk))
    quote
        local ref = $spawncall
        if $(Expr(:islocal, var))
            put!($var, ref)
        end
        ref
    end
end

"""
    @spawnat p expr

Runs `() -> expr` on process `p` (`:any`: the next worker, round-robin) and
returns a [`Future`](@ref). Inside `@sync`, the block waits for it.
"""
macro spawnat(p, expr)
    spawn_expr(p, expr)
end

"""
    @spawn expr

Same as `@spawnat :any expr`.
"""
macro spawn(expr)
    spawn_expr(QuoteNode(:any), expr)
end

"""
    @fetch expr

`fetch(@spawnat :any expr)`.
"""
macro fetch(expr)
    thunk = esc(:(() -> ($expr)))
    :(remotecall_fetch($thunk, $nextproc()))
end

"""
    @fetchfrom p expr

`remotecall_fetch(() -> expr, p)`.
"""
macro fetchfrom(p, expr)
    thunk = esc(:(() -> ($expr)))
    :(remotecall_fetch($thunk, $(esc(p))))
end

"""
    @everywhere [procs()] expr

Evaluates `expr` at top level in `Main` on every process (or on the given
ones), this one included, and waits for all. `using`/`import` statements
in `expr` run here first. Values can be interpolated with `\$x`. Failures
come back together as a `CompositeException`, as in Distributed: one
`RemoteException` per failed process in the order of the list, then a
`TaskFailedException` for this process.
"""
macro everywhere(ex)
    procs = GlobalRef(@__MODULE__, :procs)
    return esc(:($(LibCluster).@everywhere $procs() $ex))
end

macro everywhere(procs, ex)
    imps = extract_imports(ex)
    return quote
        $(isempty(imps) ? nothing : Expr(:toplevel, imps...))  # run imports locally first
        let ex = Expr(:toplevel, :(task_local_storage()[:SOURCE_PATH] = $(get(task_local_storage(), :SOURCE_PATH, nothing))), $(esc(Expr(:quote, ex)))),
            procs = $(esc(procs))
            $remotecall_eval(Main, procs, ex)
        end
    end
end

extract_imports(x) = extract_imports!(Any[], x)
function extract_imports!(imports, ex::Expr)
    if Meta.isexpr(ex, (:import, :using))
        push!(imports, ex)
    elseif Meta.isexpr(ex, :let)
        extract_imports!(imports, ex.args[2])
    elseif Meta.isexpr(ex, (:toplevel, :block))
        for arg in ex.args
            extract_imports!(imports, arg)
        end
    end
    imports
end
extract_imports!(imports, x) = imports

"""
    remotecall_eval(m::Module, procs, expr)

Evaluates `expr` in module `m` on each of `procs` (here too if listed, last,
in a task) and waits for all. Failures are gathered into one
`CompositeException`, as Distributed's `@sync` gathers them: a
`RemoteException` per failed process in the order of `procs`, then a
`TaskFailedException` for a failure here.
"""
function remotecall_eval(m::Module, procs, ex)
    me = myid()
    refs = Any[]            # futures, or the error of a call that could not be made
    run_locally = 0
    for pid in procs
        if pid == me
            run_locally += 1
        else
            push!(refs, try
                remotecall(Core.eval, pid, m, ex)
            catch err
                err
            end)
        end
    end
    yield()
    # Here last, so as not to hold back the others (Distributed).
    for _ in 1:run_locally
        push!(refs, @async Core.eval(m, ex))
    end
    errors = Any[]
    for r in refs
        if r isa Future || r isa Task
            try
                wait(r)
            catch err
                push!(errors, err)      # a Task's: TaskFailedException
            end
        else
            push!(errors, r)
        end
    end
    isempty(errors) || throw(CompositeException(errors))
    nothing
end

"`remotecall_eval(m, pid, expr)` for one process: evaluates there and returns the value."
remotecall_eval(m::Module, pid::Integer, ex) = remotecall_fetch(Core.eval, pid, m, ex)
