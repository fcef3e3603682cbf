-- pie-lsp in Neovim 0.12+: ghost-text completion through the native vim.lsp.inline_completion.
--
-- Try it:   nvim -u editor_configs/neovim/pie_lsp.lua some_file.py
-- Keep it:  copy this file to ~/.config/nvim/plugin/pie_lsp.lua (or `dofile()` it from init.lua).
--
-- Optional globals, set before this file runs (e.g. `nvim --cmd "let g:pie_lsp_cmd = [...]"`):
--   g:pie_lsp_cmd        the server command (default: the repository's .venv/bin/pie-lsp next to
--                        this file, else `pie-lsp` on PATH; e.g. { 'pie-lsp', '--model', '/path' })
--   g:pie_lsp_filetypes  the filetypes to attach to (default: those the model knows; the shipped
--                        model knows only Python)
--   g:pie_lsp_settings   the "pieLsp" settings table (see `pie-lsp --help`)
--
-- Keys in insert mode: <Tab> accepts the suggestion (or inserts a tab), <M-]> / <M-[> cycle.
-- :PieLspStats sums up this buffer's completions and cache; :PieLspStats! prints all statistics.

if vim.fn.has('nvim-0.12') == 0 or not vim.lsp.inline_completion then
  vim.notify('pie-lsp needs Neovim 0.12 or newer (vim.lsp.inline_completion)', vim.log.levels.WARN)
  return
end

local settings = vim.g.pie_lsp_settings or {
  -- Neovim already waits 200 ms after the last keystroke before it asks.
  debounceMs = 0,
  maxNewTokens = 64,
}

-- The server: g:pie_lsp_cmd, else the repository's own .venv (this file lives in
-- editor_configs/neovim/ of it), else pie-lsp on PATH.
local function server_cmd()
  if vim.g.pie_lsp_cmd then
    return vim.g.pie_lsp_cmd
  end
  local here = debug.getinfo(1, 'S').source:sub(2)
  local repo = vim.fn.fnamemodify(here, ':p:h:h:h')
  local venv = repo .. '/.venv/bin/pie-lsp'
  if vim.fn.executable(venv) == 1 then
    return { venv }
  end
  if vim.fn.executable('pie-lsp') == 1 then
    return { 'pie-lsp' }
  end
  return nil
end

local cmd = server_cmd()
if not cmd then
  vim.notify(
    'pie-lsp: no server found. Run scripts/setup in the pie-lsp repository (it creates '
      .. '.venv/bin/pie-lsp), put pie-lsp on PATH, or set g:pie_lsp_cmd.',
    vim.log.levels.ERROR
  )
  return
end

-- Ghost text that reads as ghost text in every terminal: the default links to NonText, which
-- sets only a gui colour and looks like real code without 'termguicolors'.
if not vim.g.pie_lsp_keep_highlight then
  vim.api.nvim_set_hl(0, 'ComplHint', { fg = '#7c7c7c', ctermfg = 244, italic = true })
  vim.api.nvim_set_hl(0, 'ComplHintMore', { fg = '#5f5f5f', ctermfg = 240, italic = true })
end

-- Neovim's inline-completion state for a buffer (the item it draws, its request): 0.12 has no
-- public call that reads it, so it is found as the upvalue `Completor` of get(). Where a later
-- Neovim names things otherwise this finds nothing, and only what uses it here is lost.
local function completor_of(bufnr)
  local index = 1
  while true do
    local name, value = debug.getupvalue(vim.lsp.inline_completion.get, index)
    if name == nil then
      return nil
    end
    if name == 'Completor' and type(value) == 'table' and type(value.active) == 'table' then
      return value.active[bufnr]
    end
    index = index + 1
  end
end

-- The model loads for seconds after the server starts; requests made meanwhile get nothing,
-- and Neovim asks again only after the next key. So say what is happening, and ask again for
-- the focused buffer once the model is ready.
local function echo_short(text)
  local width = math.max(20, vim.o.columns - 15)
  vim.api.nvim_echo({ { #text > width and text:sub(1, width - 1) .. '…' or text } }, true, {})
end

local function on_model_state(_, result, ctx)
  local state, model = result and result.state, result and result.model
  vim.schedule(function()
    if state == 'loading' then
      echo_short(('pie-lsp: loading model %s; ghost text starts once it is ready'):format(model))
    elseif state == 'ready' then
      echo_short(('pie-lsp: model %s ready'):format(model))
      local bufnr = vim.api.nvim_get_current_buf()
      local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = bufnr })[1]
      if client and client.id == ctx.client_id
        and vim.api.nvim_get_mode().mode:sub(1, 1) == 'i'
        and vim.lsp.inline_completion.is_enabled({ bufnr = bufnr }) then
        -- Its own debounced request, as a key would start it; where a later Neovim names
        -- things otherwise, the CursorMovedI it asks on (which other plugins also hear).
        local completor = completor_of(bufnr)
        if completor and type(completor.automatic_request) == 'function' then
          completor:automatic_request()
        else
          vim.api.nvim_exec_autocmds('CursorMovedI', { modeline = false })
        end
      end
    end
    -- A failure comes as window/showMessage from the server, which Neovim shows itself.
  end)
end

vim.lsp.config('pie_lsp', {
  cmd = cmd,
  handlers = { ['pie-lsp/modelState'] = on_model_state },
  -- The shipped model was trained on Python only; point g:pie_lsp_filetypes at more when
  -- --model is a model that knows them.
  filetypes = vim.g.pie_lsp_filetypes or { 'python' },
  root_markers = { '.git', 'pyproject.toml', 'setup.py', 'package.json', 'Cargo.toml', 'go.mod' },
  init_options = { pieLsp = settings },
  settings = { pieLsp = settings },
})
vim.lsp.enable('pie_lsp')

-- Inline completion only in the focused buffer. Neovim 0.12's autocmds for it are not
-- buffer-local: with it enabled everywhere, every attached buffer sends a request (with the
-- current window's cursor) on each keystroke in any of them.
local function pie_client(bufnr)
  return vim.lsp.get_clients({ name = 'pie_lsp', bufnr = bufnr })[1]
end

local focus = vim.api.nvim_create_augroup('pie_lsp_focus', { clear = true })
local function follow_focus()
  local current = vim.api.nvim_get_current_buf()
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    local attached = pie_client(bufnr) ~= nil
    local wanted = attached and bufnr == current
    if attached and vim.lsp.inline_completion.is_enabled({ bufnr = bufnr }) ~= wanted then
      vim.lsp.inline_completion.enable(wanted, { bufnr = bufnr })
    end
  end
end
vim.api.nvim_create_autocmd({ 'LspAttach', 'BufEnter', 'WinEnter' }, {
  group = focus,
  callback = function()
    vim.schedule(follow_focus)
  end,
})

-- Neovim 0.12 keeps drawing its last item while the user types on or moves away, and asks again
-- only 200 ms after the last key; its own accept writes the item over the range it was asked
-- for. A Tab right after a move would put the item on the line the cursor left, and one after
-- keys that do not match it would glue it to them. So an item is shown and applied only where it
-- still holds: same line, the text typed since the request a prefix of it, and the rest of the
-- line (which the item ends with) unchanged; otherwise it is hidden and Tab is a Tab. pie-lsp's
-- items start at the request's cursor and end at its line's end (lsp_server/server.py), which
-- this relies on. Returns the length of that rest of the line where the item holds, else nil.
local function holds_at_cursor(item)
  local bufnr, winid = vim.api.nvim_get_current_buf(), vim.api.nvim_get_current_win()
  local text, range = item.insert_text, item.range
  local cursor = vim.api.nvim_win_get_cursor(winid)
  local row, col = cursor[1] - 1, cursor[2]
  if type(text) ~= 'string' or range == nil or range.start.row ~= row
    or range.end_.row ~= row or col < range.start.col then
    return nil
  end
  local rest_length = range.end_.col - range.start.col
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local typed = line:sub(range.start.col + 1, col)
  local rest = line:sub(col + 1, col + rest_length)
  local holds = #typed + rest_length <= #text
    and text:sub(1, #typed) == typed
    and #rest == rest_length
    and text:sub(#text - rest_length + 1) == rest
  return holds and rest_length or nil
end

local function apply_at_cursor(item)
  local rest_length = holds_at_cursor(item)
  if not rest_length then
    if vim.api.nvim_get_mode().mode:sub(1, 1) == 'i' then
      vim.api.nvim_feedkeys(vim.keycode('<Tab>'), 'n', false)
    end
    return
  end
  local bufnr, winid = vim.api.nvim_get_current_buf(), vim.api.nvim_get_current_win()
  local row, col = unpack(vim.api.nvim_win_get_cursor(winid))
  row = row - 1
  local start = item.range.start.col
  local lines = vim.split(item.insert_text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row, start, row, col + rest_length, lines)
  -- The cursor goes after what was suggested, before the rest of the line the item ends with
  -- (the ")" of a call whose argument was completed), as VS Code places it.
  vim.api.nvim_win_set_cursor(winid, {
    row + #lines,
    (#lines == 1 and start or 0) + #lines[#lines] - rest_length,
  })
  local client = item.command and vim.lsp.get_client_by_id(item.client_id)
  if client then
    client:exec_cmd(item.command, { bufnr = bufnr })
  end
end

-- The item Neovim draws, without accepting it (get() takes the item).
local function drawn_item(bufnr)
  local completor = completor_of(bufnr)
  return completor and completor.current
end

local ghost_namespace = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')

-- The lines after a suggestion's first are virtual lines below the cursor's, and Neovim does not
-- scroll for them: at the window's bottom they would be drawn off screen. The view scrolls just
-- enough to show them, keeping the cursor in the window.
local function fit_below(winid, below)
  vim.api.nvim_win_call(winid, function()
    local overflow = vim.fn.winline() + below - vim.api.nvim_win_get_height(winid)
    -- Screen lines above the cursor that may scroll away: past 'scrolloff' Neovim would
    -- scroll back, and the next redraw would try again.
    local scrolloff = vim.wo[winid].scrolloff
    if scrolloff < 0 then -- the window follows the global value
      scrolloff = vim.go.scrolloff
    end
    local room = vim.fn.winline() - 1 - math.min(scrolloff, vim.api.nvim_win_get_height(winid))
    if overflow > 0 and room > 0 then
      local view = vim.fn.winsaveview()
      view.topline = view.topline + math.min(overflow, room)
      vim.fn.winrestview(view)
    end
  end)
end

-- What is drawn must hold where the cursor is now: Neovim draws its item again on every key,
-- matching or not, and draws an answer that arrives after the cursor has left the place it
-- was asked for (a request is not cancelled by typing on).
local function check_drawn(bufnr)
  local winid = vim.api.nvim_get_current_win()
  if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_win_get_buf(winid) ~= bufnr then
    return
  end
  local mark = vim.api.nvim_buf_get_extmarks(bufnr, ghost_namespace, 0, -1, { details = true })[1]
  if not mark then
    return
  end
  local item = drawn_item(bufnr)
  local client = pie_client(bufnr)
  if item and (client == nil or item.client_id ~= client.id) then
    return -- another server's item: its ranges follow other rules
  end
  if item and not holds_at_cursor(item) then
    vim.api.nvim_buf_clear_namespace(bufnr, ghost_namespace, 0, -1)
  elseif #(mark[4].virt_lines or {}) > 0 then
    fit_below(winid, #mark[4].virt_lines)
  end
end

-- One check per turn of the event loop, however many events asked for it (a typed key is both
-- a CursorMovedI and a TextChangedI), and after them: Neovim's own CursorMovedI handler draws
-- the old item again, and drawing may not change the buffer or the view.
local check_pending = false
local function schedule_check(bufnr)
  if check_pending then
    return
  end
  check_pending = true
  vim.schedule(function()
    check_pending = false
    check_drawn(bufnr)
  end)
end

-- Neovim's own CursorMovedI handler draws its current item again at the item's start column,
-- and fails ("Invalid 'col': out of range", a prompt that swallows the next keys) where the line
-- is now shorter than that: after Enter, <BS>, <C-u> or moving to a shorter line. This autocmd
-- is defined before Neovim's (which comes with the first attach), so it runs first, and forgets
-- such an item before Neovim can draw it. Sourced again, or after something else turned inline
-- completion on, it runs after Neovim's until the buffer's is made again.
local function forget_unplaceable_item(bufnr)
  local completor = completor_of(bufnr)
  local item = completor and completor.current
  local client = pie_client(bufnr)
  if not (item and client and item.client_id == client.id and item.range) then
    return
  end
  local row, col = item.range.start.row, item.range.start.col
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1]
  -- Only an item Neovim can no longer place: one that merely stopped holding stays current,
  -- so that a Tab typed ahead of this event still finds it and turns into a Tab
  -- (apply_at_cursor); check_drawn hides it.
  if line == nil or #line < col then
    completor.current = nil
    vim.api.nvim_buf_clear_namespace(bufnr, ghost_namespace, 0, -1)
  end
end

vim.api.nvim_create_autocmd({ 'CursorMovedI', 'TextChangedI' }, {
  group = vim.api.nvim_create_augroup('pie_lsp_stale_ghost', { clear = true }),
  callback = function(event)
    if vim.api.nvim_win_get_buf(0) == event.buf then
      forget_unplaceable_item(event.buf)
    end
    schedule_check(event.buf)
  end,
})

-- An answer arrives with no event of its own; the window's redraw is where it shows.
vim.api.nvim_set_decoration_provider(vim.api.nvim_create_namespace('pie_lsp_check_ghost'), {
  on_win = function(_, winid, bufnr)
    if winid == vim.api.nvim_get_current_win()
      and #vim.api.nvim_buf_get_extmarks(bufnr, ghost_namespace, 0, -1, { limit = 1 }) > 0 then
      schedule_check(bufnr)
    end
    return false
  end,
})

vim.keymap.set('i', '<Tab>', function()
  if not vim.lsp.inline_completion.get({ on_accept = apply_at_cursor }) then
    return '<Tab>'
  end
end, { expr = true, desc = 'pie-lsp: accept the inline completion' })
vim.keymap.set('i', '<M-]>', function()
  vim.lsp.inline_completion.select({ count = 1 })
end, { desc = 'pie-lsp: next inline completion' })
vim.keymap.set('i', '<M-[>', function()
  vim.lsp.inline_completion.select({ count = -1 })
end, { desc = 'pie-lsp: previous inline completion' })

-- One screen of what a user asks about: is the model up, what did it offer in this buffer and
-- why not more, what did the last edit cost. `:PieLspStats!` prints everything the server has.
local function stats_summary(result, uri)
  local out = { ('pie-lsp: model %s (%s), strategy %s'):format(
    tostring(result.model), tostring(result.modelState), tostring(result.strategy)
  ) }
  local gate = type(result.confidenceGate) == 'table' and result.confidenceGate or nil
  if gate then
    table.insert(out, ('gate in force: minConfidence %g, minTokenProb %g'):format(
      tonumber(gate.minConfidence) or 0, tonumber(gate.minTokenProb) or 0
    ))
  end
  local doc = (result.documents or {})[uri]
  if not doc then
    table.insert(out, result.modelState == 'ready'
      and 'this buffer: no cache yet (no completion asked for)'
      or ('this buffer: nothing yet, the model is %s'):format(tostring(result.modelState)))
    return table.concat(out, '\n')
  end
  local function n(key)
    return tonumber(doc[key]) or 0
  end
  -- Suggestions answered from text typed along need no completion by the model, so more may be
  -- shown than the model made.
  table.insert(out, ('this buffer: %d suggestions shown, %d accepted; %d completions by the '
    .. 'model, %d hidden by the confidence gate; %d answered from text typed along'):format(
    n('suggestions_offered'), n('suggestions_accepted'), n('completions'),
    n('below_confidence_gate'), n('forward_typing_hits')
  ))
  local seconds = tonumber(doc.last_completion_seconds)
  table.insert(out, ('cache: %d tokens (%d exact), %d regions, %.1f MiB; last completion %s'):format(
    n('tokens_cached'), n('exact_tokens'), n('regions'), n('cache_bytes') / 2 ^ 20,
    seconds and ('%.0f ms'):format(seconds * 1000) or '-'
  ))
  table.insert(out, ('decoding: %d of %d drafted tokens kept; %d completions drafted from the '
    .. 'one made at the same place before; %d tokens chosen by the document\'s n-grams over '
    .. 'the model\'s choice'):format(
    n('speculative_accepted_total'), n('speculative_drafted_total'), n('recalled_drafts'),
    n('ngram_chosen_tokens')
  ))
  local edit = type(doc.last_edit) == 'table' and doc.last_edit or nil
  if edit then
    table.insert(out, ('last edit (%s): %d tokens encoded, %d moved, %d reused, %.0f ms'):format(
      tostring(edit.strategy), tonumber(edit.tokens_encoded) or 0, tonumber(edit.tokens_moved) or 0,
      tonumber(edit.tokens_reused) or 0, (tonumber(edit.seconds) or 0) * 1000
    ))
  end
  return table.concat(out, '\n')
end

vim.api.nvim_create_user_command('PieLspStats', function(opts)
  local client = pie_client(0)
  if not client then
    vim.notify('pie-lsp is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  local uri = vim.uri_from_bufnr(0)
  client:exec_cmd({ title = 'pie-lsp stats', command = 'pie-lsp.stats', arguments = { uri } }, { bufnr = 0 }, function(err, result)
    if err then
      vim.notify('pie-lsp.stats failed: ' .. err.message, vim.log.levels.ERROR)
    elseif opts.bang then
      vim.print(result)
    else
      vim.api.nvim_echo({ { stats_summary(result, uri) } }, true, {})
    end
  end)
end, { bang = true, desc = 'pie-lsp: this buffer\'s completions and cache (! for everything)' })
