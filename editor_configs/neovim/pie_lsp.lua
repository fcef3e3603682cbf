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
-- :PieLspStats shows the server's per-document cache statistics.

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

vim.lsp.config('pie_lsp', {
  cmd = cmd,
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

vim.keymap.set('i', '<Tab>', function()
  if not vim.lsp.inline_completion.get() then
    return '<Tab>'
  end
end, { expr = true, desc = 'pie-lsp: accept the inline completion' })
vim.keymap.set('i', '<M-]>', function()
  vim.lsp.inline_completion.select({ count = 1 })
end, { desc = 'pie-lsp: next inline completion' })
vim.keymap.set('i', '<M-[>', function()
  vim.lsp.inline_completion.select({ count = -1 })
end, { desc = 'pie-lsp: previous inline completion' })

vim.api.nvim_create_user_command('PieLspStats', function()
  local client = pie_client(0)
  if not client then
    vim.notify('pie-lsp is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  client:exec_cmd({ title = 'pie-lsp stats', command = 'pie-lsp.stats', arguments = { vim.uri_from_bufnr(0) } }, { bufnr = 0 }, function(err, result)
    if err then
      vim.notify('pie-lsp.stats failed: ' .. err.message, vim.log.levels.ERROR)
    else
      vim.print(result)
    end
  end)
end, { desc = 'Show pie-lsp cache statistics for this buffer' })
